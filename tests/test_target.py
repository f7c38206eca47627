import torch

from tests.conftest import make_tiny_target


def test_top_state_is_post_norm_last_hidden_state(tiny_target):
    ids = torch.randint(0, tiny_target.vocab_size, (1, 12))
    top = tiny_target.forward(ids)
    reference = tiny_target.model(ids, output_hidden_states=True)
    torch.testing.assert_close(top, reference.hidden_states[-1])
    # ... and it is the state that feeds the LM head.
    torch.testing.assert_close(tiny_target.logits(top), reference.logits.float())


def test_fingerprint_and_parts():
    target = make_tiny_target("qwen2", vocab_size=101)
    fingerprint = target.fingerprint()
    assert fingerprint["vocab_size"] == 101 and fingerprint["hidden_size"] == 64
    assert fingerprint["num_hidden_layers"] == 2 and fingerprint["model_type"] == "qwen2"
    assert target.embed.weight.shape == (101, 64)
    assert not any(p.requires_grad for p in target.model.parameters())
