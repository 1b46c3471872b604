from vlft.tasks.base_task import BaseTask
from vlft.tasks.captioning import CaptionTask
from vlft.tasks.classification import ClassificationTask

__all__ = ["BaseTask", "CaptionTask", "ClassificationTask"]
