import io

from rich.console import Console

from envs.progress import ProgressBar, track


def test_bar_counts_what_was_advanced_and_draws_the_total():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=120)
    with ProgressBar(total=2_000, description="collect", unit="frames", console=console) as bar:
        bar.advance(256)
        bar.advance(256)
        assert bar.completed == 512
    assert "512/2,000 frames" in stream.getvalue()


def test_track_yields_every_item_in_order_even_when_disabled():
    assert list(track(range(5), "epoch 1/1", disable=True)) == [0, 1, 2, 3, 4]
    assert list(track(iter("abc"), "no len", disable=True)) == ["a", "b", "c"]
