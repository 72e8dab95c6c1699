import torch

from synth.seeds import derive_seed, generator_for, image_seed, step_generator


def test_training_streams_are_distinct_up_to_1024_ranks():
    """Every (rank, stream, step) gets its own seed: the old `seed*K + stream*7 + rank` collided."""
    seen = {}
    for rank in range(1024):
        for stream in range(4):
            for step in (0, 1, 1000):
                s = derive_seed("train-step", 0, step, rank, stream)
                assert s not in seen, f"rank {rank} stream {stream} step {step} collides with {seen[s]}"
                seen[s] = (rank, stream, step)
    # the collision found in issue 6: rank 7 / micro-batch 0 vs rank 0 / micro-batch 1
    a = torch.randn(8, generator=step_generator(0, 5, rank=7, stream=0))
    b = torch.randn(8, generator=step_generator(0, 5, rank=0, stream=1))
    assert not torch.equal(a, b)


def test_named_streams_differ_from_image_streams():
    assert derive_seed(3, "ancestral") != image_seed(3, 0) and derive_seed(3, "ancestral") != derive_seed(4, "ancestral")
    assert derive_seed(1, 23) != derive_seed(12, 3)  # joined with ':' so digits cannot run together


def test_generator_on_device_is_seeded():
    g1, g2 = generator_for(5), generator_for(5, device="cpu")
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))
