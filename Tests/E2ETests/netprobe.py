#!/usr/bin/env python3
"""Traffic helper for masq's end-to-end tests and demo (Python standard library only).

Every subcommand is bounded: sockets have timeouts, loops have counts, servers have a lifetime.

  serve      --bind A[,B] --tcp PORT --udp PORT [--icmp] [--late S] [--ready FILE] [--lifetime S]
             Answers each TCP line and each UDP datagram with the peer address it observed
             ("ip:port", IPv6 "[ip]:port"); a TCP line "echo N" is answered with the N bytes
             that follow it; with --late, a TCP peer that half-closes gets "late ip:port" S
             seconds after its FIN; with --icmp, logs the source of every ICMP (ICMPv6 for
             IPv6 binds) echo request. Observations go to stdout, one a line:
             "tcp IP:PORT", "udp IP:PORT", "icmp IP TOKEN".
  Addresses of either family; IP:PORT is [IP]:PORT or IP:PORT for IPv6 as for IPv4.
  tcp        --dst IP:PORT [--sport N] [--echo N]   one connection, one line; prints the
             server's answer; with --echo, then sends N bytes, checks they come back and
             prints "echo N ok"
  udp        --dst IP:PORT [--sport N] [--size N]   one datagram of N bytes (retried); prints
             the server's answer
  ping       --dst IP --token T          ICMP (ICMPv6) echo; prints "reply IP id=N" per reply
  halfclose  --dst IP:PORT [--sport N] [--wait S]   one line, then shutdown(SHUT_WR); prints
             the server's first answer and what it sends after the FIN (within S seconds)
  flood      --dst IP:PORT --count N --first-sport P   N one-datagram UDP flows from source
             ports P, P+1, ...; prints how many were answered
  session    --dst IP:PORT [--sport N]   a long-lived TCP connection driven from stdin:
             each line "x" exchanges one line and prints "ok ANSWER" (or "err WHY"),
             "q" or end of input closes it. Prints "connected LOCAL" first.
  progquery  --dev NAME                  JSON: the tcx program ids on NAME's ingress/egress
  passprog   --pin PATH [--vlan ID]      loads a tc program that passes to the next filter, pinned
             (with --vlan, after tagging the packet with VLAN ID in its metadata)
  nattable                               reads `bpftool -j map dump` of masq_nat_v4 on stdin and
             prints its flows as a table (layout: bpf/include/masq_abi.h)
  tunrelay   --a NETNS:NAME --b NETNS:NAME [--ready FILE] [--lifetime S]
             an L3 link: a tun device (IFF_TUN | IFF_NO_PI) in each network namespace, joined
             by copying every packet between the two file descriptors; the devices go away
             with the process
  sniff      --dev NAME --net CIDR [--ready FILE] [--lifetime S]
             prints "seen SRC DST PROTO" for every IPv4 packet on NAME whose source is in CIDR
  churn      --dst IP --tcp PORT --udp PORT --seconds S
             new UDP and TCP flows back to back for S seconds (short timeouts); prints
             "churn udp=ANSWERED/SENT tcp=ANSWERED/TRIED" at the end
"""
import argparse
import ctypes
import fcntl
import ipaddress
import json
import os
import platform
import select
import socket
import struct
import sys
import threading
import time

SOCKET_TIMEOUT = 5.0


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def write_ready(path):
    """Creates the file `path` (if given) atomically: the test waits for it."""
    if path:
        with open(path + ".tmp", "w") as f:
            f.write("ready\n")
        os.rename(path + ".tmp", path)


def hostport(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def peer_text(peer):
    """A socket address as "ip:port", IPv6 as "[ip]:port"."""
    return ("[%s]:%d" if ":" in peer[0] else "%s:%d") % (peer[0], peer[1])


# ---------------------------------------------------------------------------------------------
# server


def serve_tcp_connection(conn, peer, deadline, late):
    """Answers each line on one connection with the peer address; ends at EOF or idle timeout.
    With late > 0, answers once more that many seconds after the peer's FIN (a half-close)."""
    try:
        conn.settimeout(60.0)
        say("tcp " + peer_text(peer))
        buf = b""
        while time.monotonic() < deadline:
            data = conn.recv(65536)
            if not data:
                if late > 0:
                    time.sleep(late)
                    conn.sendall(("late %s\n" % peer_text(peer)).encode())
                break
            buf += data
            while b"\n" in buf:
                line, rest = buf.split(b"\n", 1)
                if line.startswith(b"echo "):
                    size = int(line[5:])
                    if len(rest) < size:
                        break  # the rest of the bytes to echo is still on its way
                    conn.sendall(rest[:size])
                    buf = rest[size:]
                    continue
                buf = rest
                conn.sendall((peer_text(peer) + "\n").encode())
    except OSError:
        pass
    finally:
        conn.close()


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def cmd_serve(args):
    deadline = time.monotonic() + args.lifetime
    readers = {}
    binds = args.bind.split(",")
    for addr in binds:
        if args.tcp:
            s = socket.socket(family(addr), socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, args.tcp))
            s.listen(64)
            readers[s] = "tcp"
        if args.udp:
            s = socket.socket(family(addr), socket.SOCK_DGRAM)
            s.bind((addr, args.udp))
            readers[s] = "udp"
    if args.icmp:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        readers[s] = "icmp"
        if any(family(addr) == socket.AF_INET6 for addr in binds):
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            readers[s] = "icmp6"
    write_ready(args.ready)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(readers), [], [], min(left, 1.0))
        for s in ready:
            kind = readers[s]
            try:
                if kind == "tcp":
                    conn, peer = s.accept()
                    threading.Thread(target=serve_tcp_connection, args=(conn, peer, deadline, args.late),
                                     daemon=True).start()
                elif kind == "udp":
                    _, peer = s.recvfrom(65535)
                    say("udp " + peer_text(peer))
                    s.sendto((peer_text(peer) + "\n").encode(), peer)
                elif kind == "icmp6":
                    # A raw ICMPv6 socket receives the message without the IPv6 header.
                    icmp, peer = s.recvfrom(65535)
                    if len(icmp) >= 8 and icmp[0] == 128:  # echo request
                        token = icmp[8:].split(b"\0")[0].decode(errors="replace")
                        say("icmp %s %s" % (peer[0], token))
                else:
                    packet, _ = s.recvfrom(65535)
                    ihl = (packet[0] & 0x0F) * 4
                    src = socket.inet_ntoa(packet[12:16])
                    icmp = packet[ihl:]
                    if len(icmp) >= 8 and icmp[0] == 8:  # echo request
                        token = icmp[8:].split(b"\0")[0].decode(errors="replace")
                        say("icmp %s %s" % (src, token))
            except OSError as e:
                say("error %s %s" % (kind, e))


# ---------------------------------------------------------------------------------------------
# clients


def client_socket(kind, sport, dst):
    """A socket of `dst`'s family ("IP:PORT"), bound to source port `sport` when given."""
    af = family(hostport(dst)[0])
    s = socket.socket(af, kind)
    s.settimeout(SOCKET_TIMEOUT)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if af == socket.AF_INET6 else "0.0.0.0", sport))
    return s


def cmd_tcp(args):
    s = client_socket(socket.SOCK_STREAM, args.sport, args.dst)
    echoed = b""
    try:
        s.connect(hostport(args.dst))
        s.sendall(b"hello\n")
        reader = s.makefile("rb")
        answer = reader.readline().decode().strip()
        if answer and args.echo:
            payload = os.urandom(args.echo)
            s.sendall(b"echo %d\n" % args.echo + payload)
            echoed = reader.read(args.echo)
    finally:
        s.close()
    if not answer:
        say("err no answer")
        return 1
    say(answer)
    if args.echo:
        if echoed != payload:
            say("err echo returned %d of %d bytes%s" % (len(echoed), args.echo,
                                                        "" if len(echoed) < args.echo else ", changed"))
            return 1
        say("echo %d ok" % args.echo)
    return 0


def cmd_udp(args):
    s = client_socket(socket.SOCK_DGRAM, args.sport, args.dst)
    s.settimeout(1.0)
    message = b"hello\n" + b"x" * max(0, args.size - 6)
    try:
        for _ in range(args.tries):
            s.sendto(message, hostport(args.dst))
            try:
                data, _ = s.recvfrom(4096)
            except socket.timeout:
                continue
            say(data.decode().strip())
            return 0
    finally:
        s.close()
    say("err no answer")
    return 1


def cmd_ping(args):
    v6 = family(args.dst) == socket.AF_INET6
    # ICMPv6: the kernel fills in the checksum (it covers a pseudo-header) and hands replies
    # over without their IPv6 header.
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) if v6 \
        else socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    request, reply = (128, 129) if v6 else (8, 0)
    # getaddrinfo keeps a link-local address's "%DEV" as the scope id; a bare (host, port)
    # would lose it.
    dst = socket.getaddrinfo(args.dst, None, s.family)[0][4] if v6 else (args.dst, 0)
    s.settimeout(1.0)
    ident = args.ident or (os.getpid() & 0xFFFF)
    replies = 0
    try:
        for seq in range(1, args.count + 1):
            payload = args.token.encode() + b"\0" * 8
            header = struct.pack("!BBHHH", request, 0, 0, ident, seq)
            if not v6:
                header = struct.pack("!BBHHH", request, 0, checksum(header + payload), ident, seq)
            s.sendto(header + payload, dst)
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                try:
                    packet, peer = s.recvfrom(65535)
                except socket.timeout:
                    break
                ihl = 0 if v6 else (packet[0] & 0x0F) * 4
                if len(packet) < ihl + 8:
                    continue
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
                if kind == reply and rid == ident and rseq == seq:
                    say("reply %s id=%d seq=%d" % (peer[0], rid, rseq))
                    replies += 1
                    break
    finally:
        s.close()
    return 0 if replies else 1


def cmd_latereply(args):
    """Answers the first datagram late, on a socket connected to its sender, and reports whether
    the kernel then took an ICMP port unreachable for it: a connected UDP socket reads one as
    ECONNREFUSED, and only when the error quotes this very socket's tuple (so the NAT in between
    translated the quoted packet, not only the error's outer header)."""
    s = socket.socket(family(args.bind), socket.SOCK_DGRAM)
    s.bind((args.bind, args.port))
    write_ready(args.ready)
    s.settimeout(args.lifetime)
    _, peer = s.recvfrom(65535)
    say("from " + peer_text(peer))
    s.connect(peer)
    time.sleep(args.delay)
    s.send(b"late\n")
    s.settimeout(3.0)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        try:
            s.recv(65535)
        except ConnectionRefusedError:
            say("refused")
            return 0
        except socket.timeout:
            break
    say("no error")
    return 1


def cmd_halfclose(args):
    s = client_socket(socket.SOCK_STREAM, args.sport, args.dst)
    try:
        s.connect(hostport(args.dst))
        s.sendall(b"hello\n")
        reader = s.makefile("rb")
        say("answer " + reader.readline().decode().strip())
        s.shutdown(socket.SHUT_WR)
        s.settimeout(args.wait)
        late = reader.readline().decode().strip()
    finally:
        s.close()
    if not late:
        say("err nothing after the FIN")
        return 1
    say(late)
    return 0


def cmd_flood(args):
    answered = 0
    socks = []
    for i in range(args.count):
        s = client_socket(socket.SOCK_DGRAM, args.first_sport + i, args.dst)
        s.setblocking(False)
        s.sendto(b"hello\n", hostport(args.dst))
        socks.append(s)
        if len(socks) == 256 or i == args.count - 1:
            # Collect what came back for this group, then free the sockets.
            time.sleep(0.2)
            for t in socks:
                try:
                    t.recvfrom(4096)
                    answered += 1
                except OSError:
                    pass
                t.close()
            socks = []
    say("answered %d of %d" % (answered, args.count))
    return 0


def cmd_session(args):
    s = client_socket(socket.SOCK_STREAM, args.sport, args.dst)
    s.connect(hostport(args.dst))
    s.settimeout(SOCKET_TIMEOUT)
    reader = s.makefile("rb")
    say("connected %s:%d" % s.getsockname())
    deadline = time.monotonic() + args.lifetime
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sys.stdin], [], [], 1.0)
            if not ready:
                continue
            line = sys.stdin.readline()
            if not line or line.strip() == "q":
                break
            try:
                s.sendall(b"x\n")
                answer = reader.readline().decode().strip()
                say("ok " + answer if answer else "err connection closed")
            except OSError as e:
                say("err %s" % e)
    finally:
        s.close()
    return 0


# ---------------------------------------------------------------------------------------------
# tcx query through the bpf() syscall (bpftool of Debian bookworm does not list tcx links)

BPF_PROG_QUERY = 16
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}


def tcx_prog_ids(ifindex, attach_type):
    libc = ctypes.CDLL(None, use_errno=True)
    ids = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("=III", attr, 0, ifindex, attach_type, 0)
    struct.pack_into("=Q", attr, 16, ctypes.addressof(ids))
    struct.pack_into("=I", attr, 24, len(ids))
    nr = BPF_SYSCALL[platform.machine()]
    if libc.syscall(nr, BPF_PROG_QUERY, attr, 64) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    count = struct.unpack_from("=I", attr, 24)[0]
    return [ids[i] for i in range(count)]


BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_PROG_TYPE_SCHED_CLS = 3


def bpf(cmd, attr):
    libc = ctypes.CDLL(None, use_errno=True)
    ret = libc.syscall(BPF_SYSCALL[platform.machine()], cmd, attr, len(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


BPF_FUNC_SKB_VLAN_PUSH = 18


def cmd_passprog(args):
    """Loads a tc program that only says "go on to the next filter" (r0 = TC_ACT_UNSPEC) and
    pins it, standing in for another tool's program on the same hook. With --vlan it first
    tags the packet with that VLAN id the way a VLAN subdevice does: in the skb's metadata
    (bpf_skb_vlan_push), so later programs on the hook see skb->vlan_present."""
    insns = b""
    if args.vlan:
        insns += struct.pack("=BBhi", 0xB7, 0x02, 0, socket.htons(0x8100))  # r2 = ETH_P_8021Q (be16)
        insns += struct.pack("=BBhi", 0xB7, 0x03, 0, args.vlan)  # r3 = VLAN id; r1 is still the skb
        insns += struct.pack("=BBhi", 0x85, 0, 0, BPF_FUNC_SKB_VLAN_PUSH)
    insns += struct.pack("=BBhi", 0xB7, 0, 0, -1) + struct.pack("=BBhi", 0x95, 0, 0, 0)  # r0 = -1; exit
    code = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIQQ", attr, 0, BPF_PROG_TYPE_SCHED_CLS, len(insns) // 8, ctypes.addressof(code),
                     ctypes.addressof(license))
    fd = bpf(BPF_PROG_LOAD, attr)
    path = ctypes.create_string_buffer(args.pin.encode())
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("=QI", attr, 0, ctypes.addressof(path), fd)
    bpf(BPF_OBJ_PIN, attr)
    os.close(fd)
    return 0


def cmd_progquery(args):
    ifindex = socket.if_nametoindex(args.dev)
    print(json.dumps({
        "tcx_ingress": tcx_prog_ids(ifindex, BPF_TCX_INGRESS),
        "tcx_egress": tcx_prog_ids(ifindex, BPF_TCX_EGRESS),
    }))
    return 0


# ---------------------------------------------------------------------------------------------
# NAT table (masq_nat_v4 dumped by bpftool with BTF: big-endian fields read as host integers)

PROTOS = {1: "icmp", 6: "tcp", 17: "udp"}


def be32_addr(n):
    return socket.inet_ntoa(struct.pack("=I", n))


def be16_port(n):
    return socket.ntohs(n)


def cmd_nattable(args):
    entries = json.load(sys.stdin)
    rows = []
    reverse = 0
    for e in entries:
        e = e.get("formatted", e)  # with -j, bpftool puts the BTF-decoded form here
        key, value = e.get("key", {}), e.get("value", {})
        if key.get("dir") != 0:  # MASQ_DIR_INGRESS: the reverse half of a pair
            reverse += 1
            continue
        flags = value.get("flags", 0)
        kind = "host" if flags & 1 else "inbound" if flags & 2 else "masq"
        proto = PROTOS.get(key.get("proto"), str(key.get("proto")))
        sport, dport = be16_port(key["sport"]), be16_port(key["dport"])
        original = "%s:%d -> %s:%d" % (be32_addr(key["saddr"]), sport, be32_addr(key["daddr"]), dport)
        if proto == "icmp":
            original = "%s id %d -> %s" % (be32_addr(key["saddr"]), sport, be32_addr(key["daddr"]))
        translated = "%s:%d" % (be32_addr(value["to_addr"]), be16_port(value["to_port"]))
        if proto == "icmp":
            translated = "%s id %d" % (be32_addr(value["to_addr"]), be16_port(value["to_port"]))
        rows.append((proto, original, translated, kind, str(value.get("packets", 0))))
    header = ("PROTO", "ORIGINAL (pod side)", "LEAVES AS", "KIND", "PACKETS")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + sorted(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("(%d outgoing flows, %d reverse entries)" % (len(rows), reverse))
    return 0


# ---------------------------------------------------------------------------------------------
# an L3 link between two namespaces, a sniffer, and flow churn

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(spec):
    """Creates tun device NAME in network namespace NETNS (spec "NETNS:NAME"); returns its fd."""
    netns, _, name = spec.partition(":")
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/run/netns/" + netns) as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns " + netns)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def cmd_tunrelay(args):
    a, b = open_tun(args.a), open_tun(args.b)
    peer = {a: b, b: a}
    write_ready(args.ready)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        ready, _, _ = select.select([a, b], [], [], 1.0)
        for fd in ready:
            try:
                os.write(peer[fd], os.read(fd, 65535))
            except OSError:
                pass  # the other device is down: the packet is lost, as on a cable
    return 0


def cmd_sniff(args):
    net = ipaddress.ip_network(args.net)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    s.bind((args.dev, 0))
    s.settimeout(0.5)
    write_ready(args.ready)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        try:
            packet = s.recv(65535)
        except socket.timeout:
            continue
        if len(packet) < 20:
            continue
        src = ipaddress.ip_address(packet[12:16])
        if src in net:
            say("seen %s %s %d" % (src, socket.inet_ntoa(packet[16:20]), packet[9]))
    return 0


def cmd_churn(args):
    deadline = time.monotonic() + args.seconds
    udp_sent = udp_ok = tcp_tried = tcp_ok = 0
    while time.monotonic() < deadline:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(0.05)
        try:
            udp_sent += 1
            u.sendto(b"churn\n", (args.dst, args.udp))
            u.recv(256)
            udp_ok += 1
        except OSError:
            pass
        finally:
            u.close()
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.settimeout(0.2)
        try:
            tcp_tried += 1
            t.connect((args.dst, args.tcp))
            t.sendall(b"churn\n")
            if t.recv(256):
                tcp_ok += 1
        except OSError:
            pass
        finally:
            t.close()
    say("churn udp=%d/%d tcp=%d/%d" % (udp_ok, udp_sent, tcp_ok, tcp_tried))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--tcp", type=int, default=0)
    p.add_argument("--udp", type=int, default=0)
    p.add_argument("--icmp", action="store_true")
    p.add_argument("--late", type=float, default=0.0)
    p.add_argument("--ready")
    p.add_argument("--lifetime", type=float, default=600.0)
    for name in ("tcp", "udp"):
        p = sub.add_parser(name)
        p.add_argument("--dst", required=True)
        p.add_argument("--sport", type=int, default=0)
        p.add_argument("--tries", type=int, default=5)
        if name == "tcp":
            p.add_argument("--echo", type=int, default=0)
        else:
            p.add_argument("--size", type=int, default=0)
    p = sub.add_parser("ping")
    p.add_argument("--dst", required=True)
    p.add_argument("--token", default="masq")
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--ident", type=int, default=0)
    p = sub.add_parser("latereply")
    p.add_argument("--bind", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=2.0)
    p.add_argument("--ready")
    p.add_argument("--lifetime", type=float, default=60.0)
    p = sub.add_parser("halfclose")
    p.add_argument("--dst", required=True)
    p.add_argument("--sport", type=int, default=0)
    p.add_argument("--wait", type=float, default=30.0)
    p = sub.add_parser("flood")
    p.add_argument("--dst", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--first-sport", type=int, required=True)
    p = sub.add_parser("session")
    p.add_argument("--dst", required=True)
    p.add_argument("--sport", type=int, default=0)
    p.add_argument("--lifetime", type=float, default=300.0)
    p = sub.add_parser("passprog")
    p.add_argument("--pin", required=True)
    p.add_argument("--vlan", type=int, default=0)
    p = sub.add_parser("progquery")
    p.add_argument("--dev", required=True)
    sub.add_parser("nattable")
    p = sub.add_parser("tunrelay")
    p.add_argument("--a", required=True)
    p.add_argument("--b", required=True)
    p.add_argument("--ready")
    p.add_argument("--lifetime", type=float, default=600.0)
    p = sub.add_parser("sniff")
    p.add_argument("--dev", required=True)
    p.add_argument("--net", required=True)
    p.add_argument("--ready")
    p.add_argument("--lifetime", type=float, default=300.0)
    p = sub.add_parser("churn")
    p.add_argument("--dst", required=True)
    p.add_argument("--tcp", type=int, required=True)
    p.add_argument("--udp", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    handler = {"serve": cmd_serve, "tcp": cmd_tcp, "udp": cmd_udp, "ping": cmd_ping,
               "halfclose": cmd_halfclose, "latereply": cmd_latereply, "flood": cmd_flood, "session": cmd_session,
               "progquery": cmd_progquery, "passprog": cmd_passprog, "nattable": cmd_nattable,
               "tunrelay": cmd_tunrelay, "sniff": cmd_sniff, "churn": cmd_churn}[args.cmd]
    try:
        return handler(args) or 0
    except OSError as e:
        say("err %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
