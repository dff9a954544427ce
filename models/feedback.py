"""What caseworkers' feedback can say, in one list: the store accepts these kinds, the API documents them, the
export turns them into training rows.

- `repeat_confirm` / `repeat_reject` (with the suggested repeat's id): a labelled pair for the repeat scorer
  (label 1 / 0);
- `topic_correction` / `department_correction` / `channel_correction` (with the right label): a labelled petition
  for that task.
"""

from __future__ import annotations

PAIR_KINDS: dict[str, int] = {"repeat_confirm": 1, "repeat_reject": 0}
LABEL_KINDS: dict[str, str] = {"topic_correction": "topic", "department_correction": "department",
                               "channel_correction": "channel"}
FEEDBACK_KINDS: tuple[str, ...] = (*PAIR_KINDS, *LABEL_KINDS)
