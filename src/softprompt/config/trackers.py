"""``train.report_to``: which experiment trackers a run reports to, checked when the config is
read (a misspelled or missing tracker fails before anything is written).

The names are accelerate's (``accelerate.tracking``), which also runs the trackers.
"""

from __future__ import annotations

from softprompt.errors import SoftpromptError, did_you_mean

# The pip command that installs each tracker accelerate knows (the package is not always its name).
INSTALL = {
    "tensorboard": "pip install 'softprompt[tensorboard]'",
    "wandb": "pip install wandb",
    "mlflow": "pip install mlflow",
    "comet_ml": "pip install comet_ml",
    "aim": "pip install aim",
    "clearml": "pip install clearml",
    "dvclive": "pip install dvclive",
    "swanlab": "pip install swanlab",
    "trackio": "pip install trackio",
}


def report_to_names(value: str | list[str]) -> list[str]:
    """The trackers ``train.report_to`` names (``none``: none; a comma list or a YAML list).

    Raises:
        SoftpromptError: an unknown tracker (with the nearest name), or one not installed (with
            the pip command that installs it).
    """
    names = value if isinstance(value, list) else [part.strip() for part in str(value).split(",")]
    names = [str(name).strip() for name in names if str(name).strip() and str(name).strip() != "none"]
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers  # late: only when asked

    available = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            known = sorted(LOGGER_TYPE_TO_CLASS)
            raise SoftpromptError(
                f"config field 'train.report_to': unknown tracker '{name}'{did_you_mean(name, known)}; "
                f"choose from none, {', '.join(known)}"
            )
        if name not in available:
            install = INSTALL.get(name, f"pip install {name}")
            raise SoftpromptError(f"config field 'train.report_to': the {name} tracker is not installed: {install}")
    return list(dict.fromkeys(names))
