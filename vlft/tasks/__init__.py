from vlft.tasks.base_task import BaseTask
from vlft.tasks.classification import ClassificationTask

__all__ = ["BaseTask", "ClassificationTask"]
