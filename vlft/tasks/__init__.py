from vlft.tasks.base_task import BaseTask
from vlft.tasks.captioning import CaptionTask
from vlft.tasks.classification import ClassificationTask
from vlft.tasks.detection import DetectionTask
from vlft.tasks.grounding import GroundingTask
from vlft.tasks.ocr import OCRTask
from vlft.tasks.image_text_pretrain import ImageTextPretrainTask
from vlft.tasks.instruction_tuning import InstructionTuningTask  # noqa: F401
from vlft.tasks.multimodal_classification import MultimodalClassificationTask
from vlft.tasks.retrieval import RetrievalTask
from vlft.tasks.vqa import AOKVQATask, GQATask, VQATask

__all__ = ["BaseTask", "CaptionTask", "ClassificationTask", "ImageTextPretrainTask", "MultimodalClassificationTask",
           "RetrievalTask", "VQATask", "AOKVQATask", "GQATask"]
