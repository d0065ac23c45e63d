"""Checks a Segmenta server's API keys and TLS from Python (grpcio).

Used by the Rust test-suite against a server started with `--auth-keys`,
`--tls-cert` and `--tls-key` (and `--tls-client-ca` for mutual TLS):

    .venv/bin/python clients/python/examples/auth_tls_check.py --server HOST:PORT \\
        --ca-cert ca.pem --token KEY [--client-cert client.pem --client-key client.key]

Prints one line per check and exits non-zero at the first failure; on
success the last line is "auth_tls_check: N passed, 0 failed". It talks to
the raw stubs of the `segmenta` package (pip install ./clients/python), to
check the wire, not the Client's conveniences.
"""
import argparse
import sys

import grpc

from segmenta import Tls
from segmenta._channel import connect
from segmenta.v1 import segmenta_pb2 as pb
from segmenta.v1 import segmenta_pb2_grpc as rpc

TIMEOUT = 10
PLAINTEXT_TIMEOUT = 5
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = 1


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def rpc_error(e):
    return f"{e.code().name}: {e.details()}"


# grpc.health.v1: grpcio-health-checking's messages when installed, else the
# two messages by hand (HealthCheckRequest{service = ""} is empty on the
# wire; HealthCheckResponse's field 1 is the status, a varint).
try:
    from grpc_health.v1 import health_pb2

    def health_request():
        return health_pb2.HealthCheckRequest(service="")

    def health_serialize(request):
        return request.SerializeToString()

    def health_status(data):
        return health_pb2.HealthCheckResponse.FromString(data).status
except Exception:  # not installed, or built for another protobuf
    health_pb2 = None

    def health_request():
        return b""

    def health_serialize(request):
        return request

    def _varint(data, i):
        value, shift = 0, 0
        while True:
            if i >= len(data):
                raise ValueError("truncated varint")
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, i
            shift += 7

    def health_status(data):
        status, i = 0, 0
        while i < len(data):
            key, i = _varint(data, i)
            field, wire = key >> 3, key & 7
            if wire == 0:
                value, i = _varint(data, i)
                if field == 1:
                    status = value
            elif wire == 1:
                i += 8
            elif wire == 2:
                length, i = _varint(data, i)
                i += length
            elif wire == 5:
                i += 4
            else:
                raise ValueError(f"unexpected wire type {wire}")
        return status


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="HOST:PORT")
    parser.add_argument("--ca-cert", required=True, metavar="PEM")
    parser.add_argument("--token", required=True, metavar="KEY")
    parser.add_argument("--client-cert", metavar="PEM")
    parser.add_argument("--client-key", metavar="PEM")
    parser.add_argument("--server-name",
                        help="the name the server's certificate must carry "
                             "(default: the host in --server)")
    args = parser.parse_args()
    if bool(args.client_cert) != bool(args.client_key):
        parser.error("--client-cert and --client-key go together")

    def tls(token):
        return connect(args.server, token=token, tls=Tls(
            ca_cert=args.ca_cert, client_cert=args.client_cert, client_key=args.client_key,
            server_name=args.server_name))

    with_token, without_token = tls(args.token), tls(None)
    plaintext = grpc.insecure_channel(args.server)

    def info_over_tls():
        info = rpc.ServerStub(with_token).GetInfo(pb.GetInfoRequest(), timeout=TIMEOUT)
        expect(info.tls, f"GetInfo says tls={info.tls}")
        expect(info.auth_required, f"GetInfo says auth_required={info.auth_required}")
        return f"GetInfo over TLS with the key: version {info.version}, tls, auth required"

    def list_without_token():
        try:
            rpc.DatasetsStub(without_token).List(pb.ListDatasetsRequest(), timeout=TIMEOUT)
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.UNAUTHENTICATED,
                   f"Datasets.List without a key: {rpc_error(e)}, not UNAUTHENTICATED")
            return "Datasets.List over TLS without a key: UNAUTHENTICATED"
        raise CheckFailed("Datasets.List without a key succeeded")

    def list_with_token():
        page = rpc.DatasetsStub(with_token).List(pb.ListDatasetsRequest(), timeout=TIMEOUT)
        return f"Datasets.List over TLS with the key: {len(page.datasets)} dataset(s)"

    def plaintext_refused():
        try:
            rpc.ServerStub(plaintext).GetInfo(pb.GetInfoRequest(), timeout=PLAINTEXT_TIMEOUT)
        except grpc.RpcError as e:
            return f"a plaintext channel is refused: {e.code().name}"
        raise CheckFailed("a plaintext call to the TLS port succeeded")

    def plaintext_client_is_told():
        import segmenta

        client = segmenta.Client(args.server, token=args.token, timeout=PLAINTEXT_TIMEOUT)
        try:
            client.info()
        except segmenta.SegmentaError as e:
            expect("the server speaks TLS" in e.message,
                   f"a plaintext segmenta.Client got no TLS hint: {e}")
            return "a plaintext segmenta.Client is told the server speaks TLS"
        finally:
            client.close()
        raise CheckFailed("a plaintext segmenta.Client call to the TLS port succeeded")

    def health_without_token():
        check = without_token.unary_unary(
            HEALTH_CHECK, request_serializer=health_serialize,
            response_deserializer=lambda data: data)
        status = health_status(check(health_request(), timeout=TIMEOUT))
        expect(status == SERVING, f"health status {status}, not SERVING ({SERVING})")
        how = "grpcio-health-checking" if health_pb2 is not None else "hand-decoded"
        return f"grpc.health.v1 Check over TLS without a key: SERVING ({how})"

    checks = [info_over_tls, list_without_token, list_with_token,
              plaintext_refused, plaintext_client_is_told, health_without_token]
    passed = 0
    for check in checks:
        try:
            line = check()
        except CheckFailed as e:
            print(f"FAIL {check.__name__}: {e}", flush=True)
            sys.exit(f"auth_tls_check: {passed} passed, 1 failed")
        except grpc.RpcError as e:
            print(f"FAIL {check.__name__}: {rpc_error(e)}", flush=True)
            sys.exit(f"auth_tls_check: {passed} passed, 1 failed")
        passed += 1
        print(f"ok   {check.__name__}: {line}", flush=True)
    for channel in (with_token, without_token, plaintext):
        channel.close()
    print(f"auth_tls_check: {passed} passed, 0 failed")


if __name__ == "__main__":
    main()
