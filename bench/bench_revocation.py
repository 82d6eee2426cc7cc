"""What FIREBASE_CHECK_REVOKED=true (the default) costs per call: one Firebase Auth lookup.

The shim's production verifier (:class:`regtask_shim.auth.FirebaseTokenVerifier`) against the
Firebase Auth emulator, the same token verified ``ROUNDS`` times with the check off and on.
Hazard: the emulator is local (loopback, no TLS, no Google front end), so the absolute cost of
the lookup against the real service is higher; the emulator checks no signature either, so the
"off" timings are lower than production's (which verifies an RS256 signature).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time

from bench.common import emit
from regtask_dev.firebase_auth import EMULATOR_HOST_ENV, FirebaseAuthEmulator
from regtask_shim.auth import FirebaseTokenVerifier

ROUNDS = 200


async def timings(verifier: FirebaseTokenVerifier, token: str) -> list[float]:
    await verifier.verify(token)  # warm: keys, connections
    out: list[float] = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        await verifier.verify(token)
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
    }


async def main() -> None:
    with FirebaseAuthEmulator() as emulator:
        os.environ[EMULATOR_HOST_ENV] = emulator.host
        user = emulator.sign_up("bench@example.com", "pw-bench-123456")
        off = FirebaseTokenVerifier(emulator.project_id, check_revoked=False, allow_emulator=True)
        on = FirebaseTokenVerifier(emulator.project_id, check_revoked=True, allow_emulator=True)
        without = summary(await timings(off, user.id_token))
        with_check = summary(await timings(on, user.id_token))
    emit(
        "revocation",
        {
            "rounds": ROUNDS,
            "check_revoked_off": without,
            "check_revoked_on": with_check,
            "added_p50_ms": round(with_check["p50_ms"] - without["p50_ms"], 3),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
