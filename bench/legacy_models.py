#!/usr/bin/env python3
"""The old Django backend's models, scored on the same folds as `smarthub eval`.

Features and hyper-parameters as in the legacy contract's "old models" table:
  light: decision tree on temperature, day of week, motion, light intensity;
  tv:    random forest (100 trees) on seconds since midnight, day of week, motion;
  fan:   scaled kNN (k=8, manhattan) on seconds since midnight, day, outside temperature / humidity /
         luminosity ("visibility"), room temperature / humidity, motion.
Folds: row index mod 5 (5 folds); accuracy and balanced accuracy over the pooled out-of-fold predictions.
scikit-learn defaults otherwise (random_state=0 where there is randomness).

Usage: python bench/legacy_models.py [--dataset-dir DIR] [--json]
Needs scikit-learn (pip install scikit-learn, e.g. in a venv); reads CSVs in the old export format.
"""

import argparse
import csv
import json
import os
import sys
import time

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

FOLDS = 5


def seconds(t):
    h, m, s = t.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def flag(v):
    return 1.0 if v.strip().lower() in ("yes", "true", "1") else 0.0


def num(v):
    return float(v) if v.strip() != "" else 0.0


def load(path, target):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if target == "light":
        x = [[num(r["temperature"]), num(r["dayOfWeek"]), flag(r["motionDetection"]), num(r["LightIntensity"])] for r in rows]
        y = [1 if r["active"].strip().lower() == "true" else 0 for r in rows]
    elif target == "tv":
        x = [[seconds(r["timeOfDay"]), num(r["dayOfWeek"]), flag(r["motionDetection"])] for r in rows]
        y = [int(r["channelOn"]) for r in rows]
    else:
        x = [[seconds(r["time"]), num(r["day"]), num(r["outside_temperature"]), num(r["outside_humidity"]),
              num(r["outside_luminosity"]), num(r["room_temperature"]), num(r["room_humidity"]),
              flag(r["motionDetection"])] for r in rows]
        y = [int(r["fanLevel"]) for r in rows]
    return np.array(x, dtype=float), np.array(y)


def model(target):
    if target == "light":
        return "decision tree", DecisionTreeClassifier(random_state=0)
    if target == "tv":
        return "random forest (100 trees)", RandomForestClassifier(n_estimators=100, random_state=0)
    return "scaled kNN (k=8, manhattan)", make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=8, metric="manhattan"))


def cross_validate(target, x, y):
    pred = np.empty_like(y)
    start = time.perf_counter()
    idx = np.arange(len(y))
    for k in range(FOLDS):
        test = idx % FOLDS == k
        name, m = model(target)
        m.fit(x[~test], y[~test])
        pred[test] = m.predict(x[test])
    return name, accuracy_score(y, pred), balanced_accuracy_score(y, pred), time.perf_counter() - start


def as_served_fan(x, y):
    """The old backend fitted the scaled pipeline's parts but predicted on unscaled inputs."""
    pred = np.empty_like(y)
    idx = np.arange(len(y))
    for k in range(FOLDS):
        test = idx % FOLDS == k
        scaler = StandardScaler().fit(x[~test])
        knn = KNeighborsClassifier(n_neighbors=8, metric="manhattan").fit(scaler.transform(x[~test]), y[~test])
        pred[test] = knn.predict(x[test])
    return accuracy_score(y, pred), balanced_accuracy_score(y, pred)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.environ.get("SMARTHUB_DATASETS", os.path.join(here, "..", "..", "shared", "datasets"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-dir", default=default)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    files = {"light": "light_dataset.csv", "tv": "tv_dataSert.csv", "fan": "wether_dataset.csv"}
    out = []
    for target, name in files.items():
        path = os.path.join(args.dataset_dir, name)
        if not os.path.isfile(path):
            print(f"{path}: missing (pass --dataset-dir)", file=sys.stderr)
            continue
        x, y = load(path, target)
        algo, acc, bal, secs = cross_validate(target, x, y)
        row = {"target": target, "model": algo, "rows": len(y), "accuracy": acc, "balanced_accuracy": bal, "seconds": secs}
        if target == "fan":
            row["as_served_accuracy"], row["as_served_balanced_accuracy"] = as_served_fan(x, y)
        out.append(row)
    if not out:
        sys.exit(1)
    if args.json:
        print(json.dumps({"targets": out}, indent=2))
        return
    print("| target | old model | rows | accuracy | balanced accuracy | time (s) |")
    print("|---|---|---|---|---|---|")
    for r in out:
        print(f"| {r['target']} | {r['model']} | {r['rows']} | {r['accuracy']:.4f} | {r['balanced_accuracy']:.4f} | {r['seconds']:.2f} |")
    for r in out:
        if "as_served_accuracy" in r:
            print(f"\nfan as the old backend served it (unscaled inputs to the scaled kNN): accuracy "
                  f"{r['as_served_accuracy']:.4f}, balanced accuracy {r['as_served_balanced_accuracy']:.4f}")


if __name__ == "__main__":
    main()
