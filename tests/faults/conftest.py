import pytest

from tests.training.corpus import write_synthetic_corpus


@pytest.fixture(scope="session")
def checkpoint_corpus(tmp_path_factory):
    """The training tests' synthetic corpus (NullTokenizer ids), for runs through pretrain() and the launchers."""
    directory = tmp_path_factory.mktemp("faults_corpus")
    return {"prefix": write_synthetic_corpus(str(directory / "synthetic_text_document")),
            "cache": str(directory / "cache")}
