#!/usr/bin/env python3
"""Opens N keep-alive TLS connections to a proxy, sends one small SOAP request on each, reads its
response, and then holds every connection open and idle: the load of the "memory per idle
keep-alive connection" figure of bench/compare.sh.

usage: bench/idle-connections.py HOST PORT N STATUS_FILE

Environment: BENCH_AUTHORIZATION (the Authorization header; none if empty), BENCH_DEVICE_ID
(X-Device-Id, if set), BENCH_CLIENT_CERT and BENCH_CLIENT_KEY (a client certificate and its key,
PEM, presented on every connection, if set: a device authenticating by certificate).

Writes "ready N" to STATUS_FILE once all N connections have had their 200 response, or
"failed REASON" if any did not; then holds the connections until killed (SIGTERM/SIGINT).
"""
import asyncio
import os
import resource
import signal
import ssl
import sys

BODY = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"'
    ' xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
    '<s:Body><m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>'
    '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder></s:Body>'
    '</s:Envelope>'
).encode()


def request(host: str) -> bytes:
    headers = [
        "POST /EWS/Exchange.asmx HTTP/1.1",
        f"Host: {host}",
        "Content-Type: text/xml; charset=utf-8",
        f"Content-Length: {len(BODY)}",
    ]
    if os.environ.get("BENCH_AUTHORIZATION"):
        headers.append(f"Authorization: {os.environ['BENCH_AUTHORIZATION']}")
    if os.environ.get("BENCH_DEVICE_ID"):
        headers.append(f"X-Device-Id: {os.environ['BENCH_DEVICE_ID']}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + BODY


async def read_response(reader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value.strip())
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if length is not None:
        await reader.readexactly(length)
    elif chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def main():
    host, port, count, status_file = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    if os.environ.get("BENCH_CLIENT_CERT"):
        context.load_cert_chain(os.environ["BENCH_CLIENT_CERT"], os.environ["BENCH_CLIENT_KEY"])
    payload = request(host)
    gate = asyncio.Semaphore(100)  # handshakes in flight at once
    connections = []

    async def one():
        async with gate:
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            writer.write(payload)
            await writer.drain()
            status = await read_response(reader)
            if status != 200:
                raise RuntimeError(f"status {status}")
            connections.append((reader, writer))

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except Exception as error:  # noqa: BLE001 - reported to the caller
        with open(status_file, "w") as out:
            out.write(f"failed {type(error).__name__}: {error}\n")
        return
    with open(status_file, "w") as out:
        out.write(f"ready {len(connections)}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


asyncio.run(main())
