"""A churn pilot as teams bring them: a customer id, a signup date, missing monthly charges, and
a scikit-learn pipeline fitted on the whole frame that drops the id and the date itself."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

CONTRACTS = ["monthly", "yearly", "two-year"]


def generate(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, n)
    contract = rng.choice(CONTRACTS, n, p=[0.55, 0.3, 0.15])
    charges = rng.normal(70, 20, n).clip(18, 120).round(2)
    logit = 1.2 - 0.05 * tenure + 0.02 * (charges - 70) + np.where(contract == "monthly", 1.0, -1.0)
    churn = rng.random(n) < 1 / (1 + np.exp(-logit))
    start = date(2024, 1, 1)
    frame = pd.DataFrame(
        {
            "customer_id": rng.permutation(np.arange(100_000, 100_000 + n)),
            "signup_date": [
                (start + timedelta(days=int(d))).isoformat() for d in rng.integers(0, 700, n)
            ],
            "tenure_months": tenure,
            "contract": contract,
            "monthly_charges": charges,
            "churn": np.where(churn, "yes", "no"),
        }
    )
    frame.loc[rng.random(n) < 0.08, "monthly_charges"] = np.nan
    return frame


def fit(frame: pd.DataFrame) -> object:
    """Fitted on the frame as it came (id and date included); the pipeline drops them."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prep = ColumnTransformer(
        [
            (
                "num",
                make_pipeline(SimpleImputer(), StandardScaler()),
                ["tenure_months", "monthly_charges"],
            ),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["contract"]),
        ],
        remainder="drop",
    )
    x = frame.drop(columns=["churn"])
    return make_pipeline(prep, LogisticRegression(max_iter=1000)).fit(x, frame["churn"])


def write(folder: Path, n: int = 2000, seed: int = 7) -> tuple[Path, Path]:
    """The pilot's CSV and joblib model in ``folder``."""
    import joblib

    frame = generate(n, seed)
    data, model = folder / "churn.csv", folder / "churn.joblib"
    frame.to_csv(data, index=False)
    joblib.dump(fit(frame), model)
    return data, model
