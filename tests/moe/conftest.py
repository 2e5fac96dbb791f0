import pytest

from tests.training.corpus import write_synthetic_corpus


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    return {"prefix": write_synthetic_corpus(str(directory / "synthetic_text_document")),
            "cache": str(directory / "cache")}
