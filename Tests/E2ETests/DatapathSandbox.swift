import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The datapath scenarios' additions to `Sandbox`: a far network behind the outside host, which
/// routes to it over a narrow (low-MTU) link, a UDP echo server there, a probe that reports ICMP
/// errors (IP_RECVERR) and the pinned maps read back with bpftool.
///
///     pod1 ─ br0 [node] ext0 100.0.0.1 ── 100.0.0.2 [outside, a router] far0 198.51.100.1
///                                              MTU `mtu` link ── 198.51.100.2 [far]
///
/// In a dual-stack sandbox the far link also carries fd00:60::1 (outside) and fd00:60::2 (far).
extension Sandbox {
    static let farIP = "198.51.100.2"
    static let farRouterIP = "198.51.100.1"
    static let farCIDR = "198.51.100.0/24"
    /// The far host's IPv6 address (dual-stack sandboxes).
    static let farIPv6 = "fd00:60::2"
    static let echoPort = 9099

    var far: String { prefix + "far" }

    /// Builds the far network, runs `body`, and always deletes the far namespace (the sandbox's
    /// teardown deletes only the namespaces it made; a namespace of a test process that died is
    /// swept by the prefix the next time a sandbox is made).
    func withFarNetwork<T>(mtu: Int, _ body: () async throws -> T) async throws -> T {
        defer {
            let pids = Command.runSync(["ip", "netns", "pids", far]).stdout
                .split(separator: "\n").compactMap { Int32($0.trimmingCharacters(in: .whitespaces)) }
            for pid in pids where pid != getpid() { kill(pid, SIGKILL) }
            Command.runSync(["ip", "netns", "delete", far])
        }
        try await sh(["ip", "netns", "add", far])
        try await sh(["ip", "-n", far, "link", "set", "lo", "up"])
        try await sh(["ip", "-n", outside, "link", "add", "far0", "mtu", "\(mtu)", "type", "veth",
                      "peer", "name", "eth0", "netns", far])
        try await sh(["ip", "-n", outside, "addr", "add", "\(Self.farRouterIP)/24", "dev", "far0"])
        try await sh(["ip", "-n", outside, "link", "set", "far0", "up"])
        try await sh(["ip", "-n", far, "link", "set", "eth0", "mtu", "\(mtu)"])
        try await sh(["ip", "-n", far, "addr", "add", "\(Self.farIP)/24", "dev", "eth0"])
        try await sh(["ip", "-n", far, "link", "set", "eth0", "up"])
        try await sh(["ip", "-n", far, "route", "add", "default", "via", Self.farRouterIP])
        try await sh(nsenter(outside, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        try await sh(["ip", "-n", node, "route", "add", Self.farCIDR, "via", Self.outsideIP])
        if dualStack {
            // The node's IPv6 default route already leads to the outside host.
            try await sh(nsenter(far, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"]))
            try await sh(["ip", "-n", outside, "addr", "add", "fd00:60::1/64", "dev", "far0", "nodad"])
            try await sh(["ip", "-n", far, "addr", "add", "\(Self.farIPv6)/64", "dev", "eth0", "nodad"])
            try await sh(["ip", "-n", far, "-6", "route", "add", "default", "via", "fd00:60::1"])
        }
        return try await body()
    }

    /// The embedded probe script, written once per sandbox.
    var dpprobe: String {
        let path = "\(dir)/dpprobe.py"
        if !FileManager.default.fileExists(atPath: path) {
            try? Self.dpprobeScript.write(toFile: path, atomically: true, encoding: .utf8)
        }
        return path
    }

    /// Starts the far host's UDP echo server and waits until it listens.
    func startFarEcho() async throws {
        let ready = "\(dir)/echo.ready"
        let process = try spawn("echo", nsenter(far, ["python3", "-u", dpprobe, "echo", "--bind", Self.farIP,
                                                      "--port", "\(Self.echoPort)", "--ready", ready]))
        try await waitUntil("the far echo server listens", timeout: .seconds(15)) {
            guard process.isRunning else { throw CommandError(description: "echo server exited: \(self.errors("echo"))") }
            return FileManager.default.fileExists(atPath: ready)
        }
    }

    /// What the datagram probe saw: the reply, or the ICMP error the kernel queued for it.
    struct DatagramResult: Decodable, CustomStringConvertible {
        var local: String
        var replyLength: Int?
        var replyIntact: Bool?
        var replyText: String?
        var errorOrigin: String?
        var errorType: Int?
        var errorCode: Int?
        var errorInfo: Int?
        var sendError: String?
        var description: String {
            "local \(local) reply \(replyLength.map(String.init) ?? "-") intact \(replyIntact.map { "\($0)" } ?? "-") "
                + "text \(replyText ?? "-") icmp \(errorOrigin ?? "-") type \(errorType ?? -1) code \(errorCode ?? -1) "
                + "info \(errorInfo ?? -1) send error \(sendError ?? "-")"
        }
    }

    /// Sends one UDP datagram of `size` bytes from `ns` and reports the reply or ICMP error.
    func datagram(_ ns: String, dst: String, port: Int, size: Int, sport: Int = 0, df: Bool = false,
                  ttl: Int = 64, wait: Double = 3) async throws -> DatagramResult {
        var args = ["python3", "-u", dpprobe, "datagram", "--dst", dst, "--port", "\(port)", "--size", "\(size)",
                    "--sport", "\(sport)", "--ttl", "\(ttl)", "--wait", "\(wait)"]
        if df { args.append("--df") }
        let result = try await Command.run(nsenter(ns, args), timeout: .seconds(20))
        guard let line = result.stdout.split(separator: "\n").last,
              let decoded = try? JSONDecoder().decode(DatagramResult.self, from: Data(line.utf8)) else {
            throw CommandError(description: "datagram probe: \(result)")
        }
        return decoded
    }

    /// A pinned per-CPU counter (masq_drops, masq_stats) at `index`, summed over CPUs.
    func pinnedCounter(_ map: String, index: UInt32) async throws -> UInt64 {
        let key = withUnsafeBytes(of: index.littleEndian) { $0.map(String.init) }
        let out = try await sh(["bpftool", "-j", "map", "lookup", "pinned", "\(bpffsRoot)/\(map)", "key"] + key)
        struct Lookup: Decodable {
            struct PerCPU: Decodable { var value: [String] }
            var values: [PerCPU]
        }
        let lookup = try JSONDecoder().decode(Lookup.self, from: Data(out.stdout.utf8))
        return lookup.values.reduce(0) { sum, cpu in
            let bytes = cpu.value.compactMap { UInt8($0.dropFirst(2), radix: 16) }
            return sum + bytes.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        }
    }

    /// Entries in the pinned NAT table.
    func natEntryCount() async throws -> Int {
        let out = try await sh(["bpftool", "-j", "map", "dump", "pinned", "\(bpffsRoot)/masq_nat_v4"])
        let entries = try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [Any]
        return entries?.count ?? 0
    }

    /// The pod's cached path MTU towards `dst` (`ip route get`), nil when none is cached.
    func cachedPMTU(_ ns: String, to dst: String) async throws -> Int? {
        let out = try await sh(["ip", "-n", ns, "route", "get", dst])
        let words = out.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard let i = words.firstIndex(of: "mtu"), i + 1 < words.count else { return nil }
        return Int(words[i + 1])
    }

    /// The probe: `echo` (a UDP echo server) and `datagram` (one datagram, then the reply or
    /// the ICMP error from the socket's error queue). Standard library only, every wait bounded.
    static let dpprobeScript = #"""
    import argparse, hashlib, json, os, select, socket, struct, sys, time

    IP_RECVERR = 11
    IP_MTU_DISCOVER = 10
    IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 0, 2
    SO_EE_ORIGIN_ICMP = 2

    def echo(a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((a.bind, a.port))
        open(a.ready, "w").close()
        deadline = time.monotonic() + a.lifetime
        while time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], 1.0)
            if not r:
                continue
            data, peer = s.recvfrom(65535)
            print("udp %s:%d %d" % (peer[0], peer[1], len(data)), flush=True)
            s.sendto(data, peer)

    def datagram(a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        s.setsockopt(socket.SOL_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if a.df else IP_PMTUDISC_DONT)
        s.setsockopt(socket.SOL_IP, socket.IP_TTL, a.ttl)
        if a.sport:
            s.bind(("0.0.0.0", a.sport))
        payload = (hashlib.sha256(b"masq").digest() * (a.size // 32 + 1))[:a.size]
        out = {}
        try:
            s.sendto(payload, (a.dst, a.port))
        except OSError as e:
            out["sendError"] = e.strerror
        out["local"] = "%s:%d" % s.getsockname()
        deadline = time.monotonic() + a.wait
        while time.monotonic() < deadline and "replyLength" not in out and "errorType" not in out:
            r, _, x = select.select([s], [], [s], max(0.0, deadline - time.monotonic()))
            try:
                data = s.recv(65535, socket.MSG_DONTWAIT)
                out["replyLength"] = len(data)
                out["replyIntact"] = data == payload
                out["replyText"] = data[:64].decode("ascii", "replace")
                continue
            except BlockingIOError:
                pass
            except OSError:
                pass
            try:
                _, anc, _, _ = s.recvmsg(65535, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except (BlockingIOError, OSError):
                continue
            for level, kind, data in anc:
                if level == socket.SOL_IP and kind == IP_RECVERR:
                    errno_, origin, etype, code, _pad, info, _data = struct.unpack("=IBBBBII", data[:16])
                    if origin == SO_EE_ORIGIN_ICMP:
                        out["errorType"], out["errorCode"], out["errorInfo"] = etype, code, info
                        if len(data) >= 24:
                            out["errorOrigin"] = socket.inet_ntoa(data[20:24])
        print(json.dumps(out), flush=True)

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--bind", required=True)
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--ready", required=True)
    e.add_argument("--lifetime", type=float, default=300.0)
    d = sub.add_parser("datagram")
    d.add_argument("--dst", required=True)
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--size", type=int, default=64)
    d.add_argument("--sport", type=int, default=0)
    d.add_argument("--ttl", type=int, default=64)
    d.add_argument("--df", action="store_true")
    d.add_argument("--wait", type=float, default=3.0)
    a = p.parse_args()
    echo(a) if a.cmd == "echo" else datagram(a)
    """#
}
