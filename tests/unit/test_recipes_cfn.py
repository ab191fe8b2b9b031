"""Fleet CloudFormation template: cfn-lint clean, IoT rule to SNS, policy scoped to the thing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "recipes" / "fleet.cfn.json"


def test_cfn_lint_passes() -> None:
    pytest.importorskip("cfnlint", reason="cfn-lint not installed (pip install cfn-lint)")
    code = "import sys; from cfnlint.runner import main; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", code, str(TEMPLATE)],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rule_routes_vehicle_events_to_sns() -> None:
    t = json.loads(TEMPLATE.read_text())
    res = t["Resources"]
    rule = next(r for r in res.values() if r["Type"] == "AWS::IoT::TopicRule")
    payload = rule["Properties"]["TopicRulePayload"]
    assert "FROM 'vehicles/+/events/#'" in payload["Sql"]
    sns = payload["Actions"][0]["Sns"]
    assert res[sns["TargetArn"]["Ref"]]["Type"] == "AWS::SNS::Topic"
    role = res[sns["RoleArn"]["Fn::GetAtt"][0]]
    stmt = role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert stmt == [{"Effect": "Allow", "Action": "sns:Publish",
                     "Resource": {"Ref": sns["TargetArn"]["Ref"]}}]


def test_policy_publish_scoped_to_connection_thing() -> None:
    t = json.loads(TEMPLATE.read_text())
    pol = next(r for r in t["Resources"].values() if r["Type"] == "AWS::IoT::Policy")
    stmts = pol["Properties"]["PolicyDocument"]["Statement"]
    publish = next(s for s in stmts if s["Action"] == "iot:Publish")
    # Fn::Sub with ${!...} leaves the IoT policy variable for IoT Core to resolve
    assert publish["Resource"]["Fn::Sub"].endswith(
        "topic/vehicles/${!iot:Connection.Thing.ThingName}/*")
    for s in stmts:
        if any(str(a).startswith("iot:") for a in (s["Action"] if isinstance(s["Action"], list)
                                                   else [s["Action"]])):
            assert s["Resource"] != "*"
