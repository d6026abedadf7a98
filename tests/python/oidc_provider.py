"""A stand-in for an OIDC provider's client-credentials flow, for tests.

Kafka's OAUTHBEARER validator fetches the signing keys from /jwks, and
librdkafka (sasl.oauthbearer.method=oidc) asks /token for an access token
with its client id and secret, as it would ask Keycloak, Entra ID or Okta.
Tokens are RS256 JWTs whose subject is the client id (the principal Kafka
sees), with the audience given. Credentials come from a file of lines
"client_id secret"; the port is written to --port-file once listening.
GET /stats answers how many tokens each client was given.
"""

import argparse
import base64
import json
import os
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

KID = "psymatch-test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def integer(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class Provider:
    def __init__(self, clients, audience, lifetime):
        self.key = rsa.generate_private_key(
            public_exponent=65537, key_size=2048)
        self.clients = clients
        self.audience = audience
        self.lifetime = lifetime
        self.issued = {}
        self.lock = threading.Lock()
        self.issuer = ""

    def jwks(self):
        numbers = self.key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256",
                          "kid": KID, "n": integer(numbers.n),
                          "e": integer(numbers.e)}]}

    def token(self, client, scope):
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": KID}
        claims = {"iss": self.issuer, "sub": client,
                  "aud": self.audience, "iat": now,
                  "exp": now + self.lifetime, "jti": str(uuid.uuid4())}
        if scope:
            claims["scope"] = scope
        signing_input = (b64url(json.dumps(header).encode()) + "."
                         + b64url(json.dumps(claims).encode()))
        signature = self.key.sign(
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        with self.lock:
            self.issued[client] = self.issued.get(client, 0) + 1
        return signing_input + "." + b64url(signature)


def handler(provider):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/jwks":
                self.answer(200, provider.jwks())
            elif self.path == "/stats":
                with provider.lock:
                    self.answer(200, dict(provider.issued))
            else:
                self.answer(404, {"error": "not_found"})

        def do_POST(self):
            if self.path != "/token":
                self.answer(404, {"error": "not_found"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            client = form.get("client_id", [""])[0]
            secret = form.get("client_secret", [""])[0]
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                pair = base64.b64decode(auth[6:]).decode()
                client, _, secret = pair.partition(":")
                client = urllib.parse.unquote(client)
                secret = urllib.parse.unquote(secret)
            if form.get("grant_type", [""])[0] != "client_credentials":
                self.answer(400, {"error": "unsupported_grant_type"})
            elif provider.clients.get(client) != secret or not secret:
                self.answer(401, {"error": "invalid_client"})
            else:
                scope = form.get("scope", [""])[0]
                token = provider.token(client, scope)
                self.answer(200, {"access_token": token,
                                  "token_type": "Bearer",
                                  "expires_in": provider.lifetime})
    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--audience", default="kafka")
    parser.add_argument("--lifetime", type=int, default=300)
    args = parser.parse_args()
    clients = {}
    with open(args.clients) as lines:
        for line in lines:
            if line.strip():
                client, secret = line.split()
                clients[client] = secret
    provider = Provider(clients, args.audience, args.lifetime)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(provider))
    port = server.server_address[1]
    provider.issuer = f"http://127.0.0.1:{port}"
    with open(args.port_file + ".tmp", "w") as out:
        out.write(str(port))
    # Written whole, then renamed: a reader never sees half a port.
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
