"""Small click logs of formats other than Criteo's, written by the tests (real ones are kept aside):
TalkingData's CSV layout and Frappe's libfm layout, with a learnable click signal."""

from __future__ import annotations

import numpy as np
import pandas as pd

TALKINGDATA = "ip,app,device,os,channel,click_time,attributed_time,is_attributed"
SPEC = """\
label: is_attributed
categorical: [ip, app, device, os, channel]
time: {column: click_time, features: [hour, weekday]}
"""


def talkingdata(path, rows: int = 4000, seed: int = 0, bad: bool = False, labeled: bool = True) -> list[str]:
    """TalkingData-shaped rows whose clicks depend on app and channel (so a model can learn them)."""
    rng = np.random.default_rng(seed)
    app, channel = rng.zipf(1.6, rows) % 300, rng.zipf(1.4, rows) % 200
    p = 1 / (1 + np.exp(-(-1.5 + 2.0 * (app % 3 == 0) - 1.5 * (channel % 5 == 0))))
    y = (rng.random(rows) < p).astype(int)
    t = pd.Timestamp("2017-11-06 14:00:00") + pd.to_timedelta(np.sort(rng.integers(0, 3 * 86400, rows)), unit="s")
    lines = [TALKINGDATA if labeled else TALKINGDATA.rsplit(",", 2)[0]]
    for i in range(rows):
        fields = [str(rng.integers(1, 5000)), str(app[i]), str(rng.integers(1, 4)), str(rng.integers(1, 40)),
                  str(channel[i]), t[i].strftime("%Y-%m-%d %H:%M:%S")]
        lines.append(",".join(fields + ([t[i].strftime("%Y-%m-%d %H:%M:%S") if y[i] else "", str(y[i])]
                                        if labeled else [])))
    if bad:
        lines.insert(5, "1,2,3,4,5,yesterday,,0")  # a time that is not one
        lines.insert(9, "1,2,3,4,5,2017-11-06 14:00:00,,maybe")  # a label that is not 0/1
        lines.insert(12, "1,2,3")  # too few fields
    path.write_text("\n".join(lines) + "\n")
    return lines


def frappe(path, rows: int = 3000, seed: int = 0, ffm: bool = False, bad: bool = False) -> list[str]:
    """Frappe-shaped libfm lines: 10 one-hot fields (disjoint index ranges), labels -1/1."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0, 900, 400, 30, 30, 10, 5, 80, 500, 300])
    idx = offsets + rng.zipf(1.5, (rows, 10)) % np.array([900, 400, 30, 30, 10, 5, 80, 500, 300, 200])
    p = 1 / (1 + np.exp(-(-0.5 + 2.0 * (idx[:, 0] % 2 == 0) - 1.0 * (idx[:, 1] % 3 == 0))))
    y = np.where(rng.random(rows) < p, "1", "-1")
    pair = (lambda k, i: f"{k + 1}:{i}:1") if ffm else (lambda k, i: f"{i}:1")
    lines = [" ".join([y[r], *(pair(k, idx[r, k]) for k in range(10))]) for r in range(rows)]
    if bad:
        lines.insert(4, "1 " + " ".join(pair(k, 3) for k in range(9)))  # nine fields
        lines.insert(7, "2 " + " ".join(pair(k, 3) for k in range(10)))  # label 2
        lines.insert(11, "1 " + " ".join(pair(k, "x") for k in range(10)))  # idx not a number
    path.write_text("\n".join(lines) + "\n")
    return lines
