import pytest

from tests.training.corpus import write_synthetic_corpus


@pytest.fixture(scope="session")
def migration_corpus(tmp_path_factory):
    """The training tests' synthetic corpus (NullTokenizer ids), for runs of the migrated recipes."""
    directory = tmp_path_factory.mktemp("migration_corpus")
    return {"prefix": write_synthetic_corpus(str(directory / "synthetic_text_document")),
            "cache": str(directory / "cache")}
