"""Perception tests; shared helpers live here."""

from torch.utils.data import Dataset


class KilledAfter(Dataset):
    """Wraps a dataset and raises KeyboardInterrupt once `limit` samples were read: a killed run."""

    def __init__(self, dataset: Dataset, limit: int) -> None:
        self.dataset, self.limit, self.reads = dataset, limit, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        self.reads += 1
        if self.reads > self.limit:
            raise KeyboardInterrupt("killed")
        return self.dataset[index]
