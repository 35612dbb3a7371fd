#!/usr/bin/env python3
"""moto's EC2 server, patched to act like AWS for hagw's VIP failover, plus IMDSv2.

moto is patched where hagw's failover depends on AWS's behaviour, and each
"instance" gets an IMDSv2 server of its own.

    python3 moto_ec2.py --ec2 127.0.0.1:0 --imds 127.0.0.1:0 --setup setup.json

Starts moto (real moto 5, `moto[server]`) on --ec2, builds the setup through
moto's own EC2/IAM API with boto3, starts one IMDS server per instance, and
prints ONE line of JSON on stdout (ports actually bound, ids created), then
serves until killed. Port 0 picks a free port.

setup.json (every key optional):
    {"region": "us-east-1", "vpc": "10.0.0.0/16", "subnet": "10.0.1.0/24",
     "instances": [{"name": "a", "mac": "02:00:00:00:00:0a", "ip": "10.0.1.10",
                    "secondary": ["10.0.1.100"], "imds": "127.0.0.1:0"}],
     "routes": [{"destination": "192.168.50.0/24", "instance": "a"}],
     "iam": true}
Output: {"ec2": URL, "region", "vpc", "subnet", "route_table",
         "instances": {NAME: {"instance_id", "eni", "mac", "imds": URL}},
         "iam": {"allowed": {"access_key_id", "secret_access_key"},
                 "denied": {...}}}   # only with "iam": true

THE PATCH (what differs from stock moto, and why):
 1. AssignPrivateIpAddresses honours AllowReassignment like AWS: with true,
    an address held as a secondary by another ENI moves (is removed there);
    with false, it fails with InvalidIPAddress.InUse. Stock moto ignores the
    flag and leaves the address on both ENIs.
 2. EC2 errors moto renders as <ErrorResponse> (its auth failures) are
    rewritten to EC2's <Response><Errors>..</Errors><RequestID>..</RequestID>
    shape, and every EC2 response carries x-amzn-requestid, as on AWS.
 3. Fault injection for tests, on the EC2 port:
      POST /_hagw/fail {"action": "AssignPrivateIpAddresses" or "*",
                        "code": "RequestLimitExceeded", "status": 503, "count": 3}
        answers the next COUNT matching calls with that EC2 error;
      GET /_hagw/calls -> {"Action": n, ...} EC2 calls received (failed ones too);
      POST /_hagw/imds/expire-tokens -> every IMDS token becomes invalid (401).
 4. moto has no IMDS for network interfaces: each instance gets its own
    IMDSv2 server, computed live from moto's EC2 state (a reassignment shows
    up at once, like on AWS): PUT /latest/api/token (TTL header required,
    1-21600 s), GETs need the token (401 otherwise, IMDSv2-only mode), and
    /latest/meta-data/{instance-id, mac, local-ipv4, placement/region,
    placement/availability-zone, iam/security-credentials/[ROLE],
    network/interfaces/macs/MAC/{device-number, interface-id, local-ipv4s,
    ipv6s, mac, owner-id, subnet-id, subnet-ipv4-cidr-block, vpc-id,
    vpc-ipv4-cidr-block, vpc-ipv4-cidr-blocks}}. With "iam", the role
    credentials are real moto STS credentials of a role allowed ec2:*.
 5. The `addresses.private-ip-address` filter of DescribeNetworkInterfaces
    matches secondary private IPs too, as on AWS (stock moto matches only the
    primary one, so "which ENI holds the VIP" found nobody).
Moto's request authentication stays stock: POST /moto-api/reset-auth with
body "0" turns on SigV4 checking against moto's IAM (the setup is done by then).
"""

import argparse
import datetime
import io
import json
import os
import secrets
import sys
import threading
import time
import uuid
from urllib.parse import parse_qs

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.ec2.responses.elastic_network_interfaces import ElasticNetworkInterfaces
from moto.ec2.exceptions import EC2ClientError
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

# --- patch 1: AllowReassignment -------------------------------------------

_stock_assign = ElasticNetworkInterfaces.assign_private_ip_addresses


def _assign_private_ip_addresses(self):
    eni_id = self._get_param("NetworkInterfaceId")
    wanted = self._get_param("PrivateIpAddresses", [])
    allow = str(self._get_param("AllowReassignment", "false")).lower() == "true"
    for other in self.ec2_backend.enis.values():
        if other.id == eni_id:
            continue
        for item in list(other.private_ip_addresses):
            if item.get("PrivateIpAddress") not in wanted:
                continue
            if item.get("Primary") or not allow:
                raise EC2ClientError(
                    "InvalidIPAddress.InUse",
                    f"Address {item['PrivateIpAddress']} is in use by {other.id}",
                )
            other.private_ip_addresses.remove(item)
    return _stock_assign(self)


ElasticNetworkInterfaces.assign_private_ip_addresses = _assign_private_ip_addresses

# --- patch 5: the addresses filter sees secondary addresses ------------------

from moto.ec2.models.elastic_network_interfaces import NetworkInterface  # noqa: E402

_stock_filter = NetworkInterface.get_filter_value


def _get_filter_value(self, filter_name, method_name=None):
    if filter_name == "addresses.private-ip-address":
        ips = [self.private_ip_address]
        for item in self.private_ip_addresses or []:
            ip = item.get("PrivateIpAddress") if isinstance(item, dict) else item
            if ip and ip not in ips:
                ips.append(ip)
        return ips
    return _stock_filter(self, filter_name, method_name)


NetworkInterface.get_filter_value = _get_filter_value

# --- patches 2 and 3: EC2 error shape, request ids, fault injection ----------

STATE = {"lock": threading.Lock(), "faults": [], "calls": {}, "tokens": {}}


def _error_xml(code, message, request_id):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{request_id}</RequestID></Response>"
    ).encode()


class Ec2Front:
    """WSGI wrapper in front of moto's dispatcher."""

    def __init__(self, moto_app):
        self.moto_app = moto_app

    def __call__(self, environ, start_response):
        req = Request(environ)
        if req.path.startswith("/_hagw/"):
            return self.control(req)(environ, start_response)
        body = req.get_data()  # cached; handed on below
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        action = parse_qs(body.decode(errors="replace")).get("Action", [None])[0]
        if action is None or req.path.startswith("/moto-api"):
            return self.moto_app(environ, start_response)
        request_id = str(uuid.uuid4())
        with STATE["lock"]:
            STATE["calls"][action] = STATE["calls"].get(action, 0) + 1
            fault = next((f for f in STATE["faults"]
                          if f["count"] > 0 and f["action"] in (action, "*")), None)
            if fault:
                fault["count"] -= 1
        if fault:
            resp = Response(_error_xml(fault["code"], fault.get("message", fault["code"]), request_id),
                            status=fault.get("status", 503), content_type="text/xml")
            resp.headers["x-amzn-requestid"] = request_id
            return resp(environ, start_response)
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers

        out = b"".join(self.moto_app(environ, capture))
        headers = [(k, v) for k, v in captured["headers"]
                   if k.lower() not in ("content-length", "x-amzn-requestid")]
        if b"<ErrorResponse>" in out[:200]:
            code = out.split(b"<Code>")[1].split(b"</Code>")[0].decode()
            msg = out.split(b"<Message>")[1].split(b"</Message>")[0].decode()
            out = _error_xml(code, msg, request_id)
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
            headers.append(("Content-Type", "text/xml"))
        headers += [("x-amzn-requestid", request_id), ("Content-Length", str(len(out)))]
        start_response(captured["status"], headers)
        return [out]

    def control(self, req):
        with STATE["lock"]:
            if req.path == "/_hagw/fail" and req.method == "POST":
                STATE["faults"].append(json.loads(req.get_data()))
                return Response("ok")
            if req.path == "/_hagw/calls":
                return Response(json.dumps(STATE["calls"]), content_type="application/json")
            if req.path == "/_hagw/imds/expire-tokens" and req.method == "POST":
                STATE["tokens"].clear()
                return Response("ok")
        return Response("unknown control path", status=404)


# --- patch 4: IMDSv2 ----------------------------------------------------------

class Imds:
    """IMDSv2 of one instance, read live from moto's EC2 backend."""

    ROLE = "hagw-test-role"

    def __init__(self, backend, instance_id, role_keys):
        self.backend, self.instance_id, self.role_keys = backend, instance_id, role_keys

    def enis(self):
        return sorted((e for e in self.backend.enis.values()
                       if e.instance is not None and e.instance.id == self.instance_id),
                      key=lambda e: e.device_index or 0)

    def documents(self):
        docs = {}
        enis = self.enis()
        primary = enis[0] if enis else None
        docs["instance-id"] = self.instance_id
        docs["placement/region"] = self.backend.region_name
        if primary:
            docs["mac"] = primary.mac_address
            docs["local-ipv4"] = primary.private_ip_address
            docs["placement/availability-zone"] = primary.subnet.availability_zone
        docs["network/interfaces/macs/"] = "\n".join(e.mac_address + "/" for e in enis)
        for e in enis:
            vpc = self.backend.get_vpc(e.subnet.vpc_id)
            blocks = [a["cidr_block"] for a in vpc.get_cidr_block_association_set()
                      if a["cidr_block_state"]["state"] == "associated"] or [vpc.cidr_block]
            ips = sorted(e.private_ip_addresses, key=lambda i: not i.get("Primary"))
            items = {
                "device-number": str(e.device_index or 0),
                "interface-id": e.id,
                "local-ipv4s": "\n".join(i["PrivateIpAddress"] for i in ips),
                "mac": e.mac_address,
                "owner-id": DEFAULT_ACCOUNT_ID,
                "subnet-id": e.subnet.id,
                "subnet-ipv4-cidr-block": e.subnet.cidr_block,
                "vpc-id": vpc.id,
                "vpc-ipv4-cidr-block": vpc.cidr_block,
                "vpc-ipv4-cidr-blocks": "\n".join(blocks),
            }
            if e.ipv6_addresses:
                items["ipv6s"] = "\n".join(e.ipv6_addresses)
            base = f"network/interfaces/macs/{e.mac_address}/"
            docs[base] = "\n".join(sorted(items))
            docs.update({base + k: v for k, v in items.items()})
        docs["iam/security-credentials/"] = self.ROLE
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        expiration = self.role_keys["expiration"] or now + datetime.timedelta(hours=6)
        stamp = lambda t: t.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        docs["iam/security-credentials/" + self.ROLE] = json.dumps({
            "Code": "Success", "LastUpdated": stamp(now), "Type": "AWS-HMAC",
            "AccessKeyId": self.role_keys["access_key_id"],
            "SecretAccessKey": self.role_keys["secret_access_key"],
            "Token": self.role_keys["token"], "Expiration": stamp(expiration),
        }, indent=2)
        # Directory listings of the top levels.
        docs[""] = "iam/\ninstance-id\nlocal-ipv4\nmac\nnetwork/\nplacement/"
        return docs

    def __call__(self, environ, start_response):
        req = Request(environ)
        if req.path == "/latest/api/token":
            if req.method != "PUT":
                resp = Response("", status=405)
            elif "X-Forwarded-For" in req.headers:
                resp = Response("", status=403)
            else:
                try:
                    ttl = int(req.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
                except ValueError:
                    ttl = 0
                if not 1 <= ttl <= 21600:
                    resp = Response("", status=400)
                else:
                    token = secrets.token_urlsafe(32)
                    with STATE["lock"]:
                        STATE["tokens"][token] = time.monotonic() + ttl
                    resp = Response(token, content_type="text/plain")
                    resp.headers["X-aws-ec2-metadata-token-ttl-seconds"] = str(ttl)
            return resp(environ, start_response)
        token = req.headers.get("X-aws-ec2-metadata-token", "")
        with STATE["lock"]:
            valid = STATE["tokens"].get(token, 0) > time.monotonic()
        if req.method not in ("GET", "HEAD"):
            resp = Response("", status=405)
        elif not valid:
            resp = Response("", status=401)
        elif not req.path.startswith("/latest/meta-data/"):
            resp = Response("Not Found", status=404)
        else:
            doc = self.documents().get(req.path[len("/latest/meta-data/"):])
            resp = (Response(doc, content_type="text/plain") if doc is not None
                    else Response("Not Found", status=404))
        return resp(environ, start_response)


# --- setup and main ---------------------------------------------------------

def serve(app, hostport):
    host, _, port = hostport.rpartition(":")
    server = make_server(host.strip("[]"), int(port), app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shown = f"[{host.strip('[]')}]" if ":" in host.strip("[]") else host
    return f"http://{shown}:{server.server_port}"


def setup(ec2_url, spec, default_imds):
    region = spec.get("region", "us-east-1")
    kw = dict(endpoint_url=ec2_url, region_name=region,
              aws_access_key_id="setup", aws_secret_access_key="setup")
    ec2 = boto3.client("ec2", **kw)
    backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    vpc = ec2.create_vpc(CidrBlock=spec.get("vpc", "10.0.0.0/16"))["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=spec.get("subnet", "10.0.1.0/24"))["Subnet"]["SubnetId"]
    out = {"ec2": ec2_url, "region": region, "vpc": vpc, "subnet": subnet, "instances": {}}
    role_keys = {"access_key_id": "ASIAHAGWTESTROLE", "secret_access_key": "hagw-test-role-secret",
                 "token": "hagw-test-session-token", "expiration": None}
    if spec.get("iam"):
        iam = boto3.client("iam", **kw)
        allow_ec2 = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}]})
        out["iam"] = {}
        for name in ("allowed", "denied"):
            iam.create_user(UserName=f"hagw-{name}")
            if name == "allowed":
                iam.put_user_policy(UserName="hagw-allowed", PolicyName="ec2", PolicyDocument=allow_ec2)
            key = iam.create_access_key(UserName=f"hagw-{name}")["AccessKey"]
            out["iam"][name] = {"access_key_id": key["AccessKeyId"],
                                "secret_access_key": key["SecretAccessKey"]}
        # The instance role: STS session credentials of a role allowed ec2:*.
        trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                            "Principal": {"Service": "ec2.amazonaws.com"}}]})
        arn = iam.create_role(RoleName=Imds.ROLE, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        iam.put_role_policy(RoleName=Imds.ROLE, PolicyName="ec2", PolicyDocument=allow_ec2)
        c = boto3.client("sts", **kw).assume_role(RoleArn=arn, RoleSessionName="hagw")["Credentials"]
        role_keys = {"access_key_id": c["AccessKeyId"], "secret_access_key": c["SecretAccessKey"],
                     "token": c["SessionToken"], "expiration": c["Expiration"]}
    for inst in spec.get("instances", []):
        run = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, NetworkInterfaces=[
            {"DeviceIndex": 0, "SubnetId": subnet, "PrivateIpAddress": inst["ip"]}])
        iid = run["Instances"][0]["InstanceId"]
        eni_id = run["Instances"][0]["NetworkInterfaces"][0]["NetworkInterfaceId"]
        eni = backend.get_network_interface(eni_id)
        if inst.get("mac"):
            eni.mac_address = inst["mac"].lower()
        if inst.get("secondary"):
            ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                            PrivateIpAddresses=inst["secondary"])
        imds = serve(Imds(backend, iid, role_keys), inst.get("imds") or default_imds)
        out["instances"][inst["name"]] = {"instance_id": iid, "eni": eni_id,
                                          "mac": eni.mac_address, "imds": imds}
    if spec.get("routes"):
        rtb = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
        out["route_table"] = rtb
        for r in spec["routes"]:
            ec2.create_route(RouteTableId=rtb, DestinationCidrBlock=r["destination"],
                             NetworkInterfaceId=out["instances"][r["instance"]]["eni"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ec2", default="127.0.0.1:0", help="HOST:PORT of the EC2 endpoint")
    p.add_argument("--imds", default="127.0.0.1:0",
                   help="HOST:PORT of the IMDS of each instance without its own \"imds\" "
                        "(with a fixed port, give each instance its own)")
    p.add_argument("--setup", help="setup JSON file (see the module doc)")
    args = p.parse_args()
    spec = {}
    if args.setup:
        with open(args.setup) as f:
            spec = json.load(f)
    ec2_url = serve(Ec2Front(DomainDispatcherApplication(create_backend_app)), args.ec2)
    print(json.dumps(setup(ec2_url, spec, args.imds)), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
    sys.exit(main())
