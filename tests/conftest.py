import pytest

from longquant_checks import PromptTokenizer, demo_model_path


@pytest.fixture(scope="session")
def demo_path():
    return demo_model_path()


@pytest.fixture(scope="session")
def tok(demo_path):
    """The real SmolLM2-135M-Instruct tokenizer (with its chat template)."""
    return PromptTokenizer.from_pretrained(demo_path)
