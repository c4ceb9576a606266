"""Computes the request-signing test vector the way backend.ai-client 20.03 signs a request.

Run: python3 crates/sessionview-query/tests/sign_vector.py > crates/sessionview-query/tests/sign_vector.txt
"""
import hashlib
import hmac
from datetime import datetime

secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
method = "POST"
rel_url = "/admin/graphql"
date = datetime.fromisoformat("2020-02-16T15:47:28.997335+00:00")
host = "127.0.0.1:8080"
content_type = "application/json"
api_version = "v5.20191215"
body_hash = hashlib.new("sha256", b"").hexdigest()

sign_str = "{0}\n{1}\n{2}\nhost:{3}\ncontent-type:{4}\nx-backendai-version:{5}\n{6}".format(
    method, rel_url, date.isoformat(), host, content_type.lower(), api_version, body_hash
)
sign_key = hmac.new(secret_key.encode(), date.strftime("%Y%m%d").encode(), "sha256").digest()
sign_key = hmac.new(sign_key, host.encode(), "sha256").digest()
print(hmac.new(sign_key, sign_str.encode(), "sha256").hexdigest())
