"""Eight concurrent clients with two different photos on one real server: every reply arrives, and
each is the reply to the client's own photo. The full 8 x 20 run with percentiles is
benchmarks/load_server.py; this one is short enough for CI."""
import io

from PIL import Image

from .fuzz_messages import CHEAP, small_photos
from .load_clients import run_load

CLIENTS, PER_CLIENT = 8, 2


def test_eight_clients_get_their_own_replies_and_no_busy_below_the_queue_limit(server_address, astronaut_png,
                                                                               grace_hopper_jpg):
    photos = small_photos([astronaut_png, grace_hopper_jpg])
    sized = [(photo, list(Image.open(io.BytesIO(photo)).size)) for photo in photos]
    assert sized[0][1] != sized[1][1]  # a mixed-up reply would show in its image size
    report = run_load(server_address, sized, CLIENTS, PER_CLIENT, CHEAP, in_flight=2)
    print(f"\n{CLIENTS} clients x {PER_CLIENT}: {report.seconds:.1f} s, latency ms {report.percentiles()}")
    # 16 requests at most in flight, under the queue of 32: nobody is told "busy".
    assert report.codes == {"ok": CLIENTS * PER_CLIENT}
    assert report.mixed == []
