import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The attach modes the datapath scenarios run with (production's `AttachMode` also has `auto`).
enum AttachScenario: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case tcx, tc
    var testDescription: String { "attach mode \(rawValue)" }
}

/// One end-to-end sandbox: network namespaces made for one test, a bpffs of its own, and every
/// process the test started. `Sandbox.with` tears all of it down, also when the test fails.
///
///     pod1 10.244.1.2 ─┐                                          ┌─ outside 100.0.0.2/24
///                      ├─ br0 10.244.1.1 [node] ext0 100.0.0.1 ───┤  (and 100.0.9.2 on lo:
///     pod2 10.244.1.3 ─┘   forwarding on, masqd on ext0           └   the excluded destination)
///
/// The outside host routes back to the pod CIDR only for replies from 100.0.9.2 (a policy rule),
/// so a reply from 100.0.0.2 reaches a pod only when masqd translated the flow.
///
/// A dual-stack sandbox (`with(dualStack: true)`) adds IPv6 beside it (and to the far network
/// of `withFarNetwork`, fd00:60::/64):
///
///     pod1 fd00:10:244:1::2 ─┐
///                            ├─ br0 fd00:10:244:1::1 [node] ext0 fd00:50::1 ── fd00:50::2 [outside]
///     pod2 fd00:10:244:1::3 ─┘
///
/// No host routes back to the pods' IPv6 CIDR at all: an IPv6 reply reaches a pod only when
/// masqd translated the flow. Duplicate address detection is off in every namespace, so
/// addresses are usable at once.
final class Sandbox: @unchecked Sendable {
    static let podCIDR = "10.244.1.0/24"
    static let podIPs = ["10.244.1.2", "10.244.1.3"]
    static let nodeIP = "100.0.0.1"
    static let outsideIP = "100.0.0.2"
    /// On the outside host; the node routes it via 100.0.0.2 and masqd must not masquerade it.
    static let excludedIP = "100.0.9.2"
    static let excludedCIDR = "100.0.9.0/24"
    static let tcpPort = 8080
    static let udpPort = 8081
    static let device = "ext0"
    static let podCIDRv6 = "fd00:10:244:1::/64"
    static let podIPv6s = ["fd00:10:244:1::2", "fd00:10:244:1::3"]
    static let nodeIPv6 = "fd00:50::1"
    static let outsideIPv6 = "fd00:50::2"

    let prefix: String
    let dir: String
    /// IPv6 beside IPv4 (see the type's comment).
    let dualStack: Bool
    /// The bpffs this sandbox mounts (in the root mount namespace).
    let bpffsMount: String
    /// masqd's --bpffs-root: a directory inside that bpffs, as /sys/fs/bpf/masq is in production.
    let bpffsRoot: String
    let socketPath: String
    /// The ip-masq-agent file every masqd of this sandbox reads: it lists the excluded CIDR.
    var ipMasqAgentFile: String { "\(dir)/ip-masq-agent" }
    private(set) var processes: [ChildProcess] = []
    private(set) var masqd: ChildProcess?
    private var masqdRuns = 0
    private var bpffsMounted = false
    private var namespaces: [String] = []

    var node: String { prefix + "node" }
    var outside: String { prefix + "out" }
    var pods: [String] { [prefix + "pod1", prefix + "pod2"] }

    private static let counter = Counter()
    /// The directory that holds every sandbox of this test process.
    static let runDir = "/run/masqe2e-\(getpid())"

    private init(dualStack: Bool) {
        self.dualStack = dualStack
        let n = Self.counter.next()
        prefix = "masqe2e-\(getpid())-\(n)-"
        dir = "\(Self.runDir)/\(n)"
        bpffsMount = "\(dir)/bpffs"
        bpffsRoot = "\(dir)/bpffs/masq"
        socketPath = "\(dir)/masqd.sock"
    }

    /// Builds a sandbox, runs `body` in it and always tears it down.
    static func with<T>(dualStack: Bool = false, _ body: (Sandbox) async throws -> T) async throws -> T {
        Self.sweepStale()
        let sandbox = Sandbox(dualStack: dualStack)
        defer { sandbox.teardown() }
        try await sandbox.build()
        return try await body(sandbox)
    }

    // MARK: topology

    private func build() async throws {
        try FileManager.default.createDirectory(atPath: bpffsMount, withIntermediateDirectories: true)
        try await sh(["mount", "-t", "bpf", "bpf", bpffsMount])
        bpffsMounted = true
        try "nonMasqueradeCIDRs: [\(Self.excludedCIDR)]\n".write(toFile: ipMasqAgentFile, atomically: true, encoding: .utf8)

        for ns in [node, outside] + pods {
            try await sh(["ip", "netns", "add", ns])
            namespaces.append(ns)
            try await sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            if dualStack {
                try await sh(nsenter(ns, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]))
            }
        }
        try await sh(nsenter(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        for ns in [node, outside] {
            // Strict reverse-path filtering would hide a mistranslated packet instead of showing
            // it to the server, so the failure message could not say what went wrong.
            try await sh(nsenter(ns, ["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
                                      "net.ipv4.conf.default.rp_filter=0"]))
        }

        try await sh(["ip", "-n", node, "link", "add", "br0", "type", "bridge"])
        try await sh(["ip", "-n", node, "addr", "add", "10.244.1.1/24", "dev", "br0"])
        try await sh(["ip", "-n", node, "link", "set", "br0", "up"])
        for (i, (pod, ip)) in zip(pods, Self.podIPs).enumerated() {
            let port = "vpod\(i + 1)"
            try await sh(["ip", "-n", node, "link", "add", port, "type", "veth",
                          "peer", "name", "eth0", "netns", pod])
            try await sh(["ip", "-n", node, "link", "set", port, "master", "br0", "up"])
            try await sh(["ip", "-n", pod, "addr", "add", "\(ip)/24", "dev", "eth0"])
            try await sh(["ip", "-n", pod, "link", "set", "eth0", "up"])
            try await sh(["ip", "-n", pod, "route", "add", "default", "via", "10.244.1.1"])
        }

        try await sh(["ip", "-n", node, "link", "add", Self.device, "type", "veth",
                      "peer", "name", "eth0", "netns", outside])
        try await sh(["ip", "-n", node, "addr", "add", "\(Self.nodeIP)/24", "dev", Self.device])
        try await sh(["ip", "-n", node, "link", "set", Self.device, "up"])
        try await sh(["ip", "-n", outside, "addr", "add", "\(Self.outsideIP)/24", "dev", "eth0"])
        try await sh(["ip", "-n", outside, "link", "set", "eth0", "up"])
        try await sh(["ip", "-n", outside, "addr", "add", "\(Self.excludedIP)/32", "dev", "lo"])
        try await sh(["ip", "-n", node, "route", "add", Self.excludedCIDR, "via", Self.outsideIP])
        try await sh(["ip", "-n", outside, "rule", "add", "from", Self.excludedIP, "lookup", "100"])
        try await sh(["ip", "-n", outside, "route", "add", Self.podCIDR, "via", Self.nodeIP,
                      "table", "100"])
        if dualStack { try await buildIPv6() }
    }

    /// The IPv6 half of a dual-stack sandbox, on the links `build` made.
    private func buildIPv6() async throws {
        for ns in [node, outside] {
            try await sh(nsenter(ns, ["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]))
        }
        try await sh(["ip", "-n", node, "addr", "add", "fd00:10:244:1::1/64", "dev", "br0", "nodad"])
        for (pod, ip) in zip(pods, Self.podIPv6s) {
            try await sh(["ip", "-n", pod, "addr", "add", "\(ip)/64", "dev", "eth0", "nodad"])
            try await sh(["ip", "-n", pod, "-6", "route", "add", "default", "via", "fd00:10:244:1::1"])
        }
        try await sh(["ip", "-n", node, "addr", "add", "\(Self.nodeIPv6)/64", "dev", Self.device, "nodad"])
        try await sh(["ip", "-n", outside, "addr", "add", "\(Self.outsideIPv6)/64", "dev", "eth0", "nodad"])
        try await sh(["ip", "-n", node, "-6", "route", "add", "default", "via", Self.outsideIPv6])
    }

    /// Removes everything this sandbox made. Synchronous so that it can run from `defer`.
    func teardown() {
        for process in processes { Command.stop(process) }
        processes.removeAll()
        masqd = nil
        // Deleting the namespaces deletes their devices, and with them tc filters and tcx links.
        // A process still inside one (a stray child) would keep it alive: stop those first.
        for ns in namespaces.reversed() { Self.deleteNamespace(ns) }
        namespaces.removeAll()
        if bpffsMounted {
            if !Command.runSync(["umount", bpffsMount]).succeeded {
                Command.runSync(["umount", "-l", bpffsMount])
            }
            bpffsMounted = false
        }
        try? FileManager.default.removeItem(atPath: dir)
        // The per-process directory goes with its last sandbox.
        if let left = try? FileManager.default.contentsOfDirectory(atPath: Self.runDir), left.isEmpty {
            try? FileManager.default.removeItem(atPath: Self.runDir)
        }
    }

    /// Removes sandboxes left by test processes that died before their teardown ran.
    private static func sweepStale() {
        let listed = Command.runSync(["ip", "netns", "list"]).stdout
        for line in listed.split(separator: "\n") {
            let name = String(line.split(separator: " ").first ?? "")
            let parts = name.split(separator: "-")
            guard parts.count >= 3, parts[0] == "masqe2e", let pid = Int32(parts[1]),
                  pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            deleteNamespace(name)
        }
        let runEntries = (try? FileManager.default.contentsOfDirectory(atPath: "/run")) ?? []
        for entry in runEntries where entry.hasPrefix("masqe2e-") {
            guard let pid = Int32(entry.dropFirst("masqe2e-".count)), pid != getpid(),
                  kill(pid, 0) != 0, errno == ESRCH else { continue }
            let mounts = Command.read("/proc/self/mounts")
            for line in mounts.split(separator: "\n") {
                let fields = line.split(separator: " ")
                if fields.count > 1, fields[1].hasPrefix("/run/\(entry)/") {
                    Command.runSync(["umount", "-l", String(fields[1])])
                }
            }
            try? FileManager.default.removeItem(atPath: "/run/\(entry)")
        }
    }

    /// Stops the processes left in a namespace of ours, then deletes it.
    private static func deleteNamespace(_ ns: String) {
        let pids = Command.runSync(["ip", "netns", "pids", ns]).stdout
            .split(separator: "\n").compactMap { Int32($0.trimmingCharacters(in: .whitespaces)) }
        for pid in pids where pid != getpid() { kill(pid, SIGKILL) }
        Command.runSync(["ip", "netns", "delete", ns])
    }

    // MARK: commands

    /// argv to run in a namespace's network stack only: unlike `ip netns exec`, nsenter does not
    /// remount /sys, so the bpffs mounted in the root mount namespace stays visible.
    func nsenter(_ ns: String, _ argv: [String]) -> [String] {
        ["nsenter", "--net=/run/netns/\(ns)"] + argv
    }

    /// Runs a setup command; throws with its output when it fails.
    @discardableResult
    func sh(_ argv: [String], timeout: Duration = .seconds(30)) async throws -> CommandResult {
        let result = try await Command.run(argv, timeout: timeout)
        guard result.succeeded else { throw CommandError(description: result.description) }
        return result
    }

    /// Starts a long-running process owned by this sandbox (stopped at teardown).
    func spawn(_ name: String, _ argv: [String], stdin: Pipe? = nil) throws -> ChildProcess {
        let process = try Command.launch(argv, stdout: "\(dir)/\(name).out",
                                         stderr: "\(dir)/\(name).err", stdin: stdin)
        processes.append(process)
        return process
    }

    func output(_ name: String) -> String { Command.read("\(dir)/\(name).out") }
    func errors(_ name: String) -> String { Command.read("\(dir)/\(name).err") }

    // MARK: traffic

    static let netprobe: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("netprobe.py").path
    }()

    /// argv for netprobe.py in a namespace.
    func netprobe(_ ns: String, _ args: [String]) -> [String] {
        nsenter(ns, ["python3", "-u", Self.netprobe] + args)
    }

    /// Starts the outside servers (TCP, UDP, ICMP observer on both outside addresses, and the
    /// IPv6 one in a dual-stack sandbox) and waits until they listen.
    func startServers() async throws {
        try await startServer("server", in: outside,
                              binds: [Self.outsideIP, Self.excludedIP] + (dualStack ? [Self.outsideIPv6] : []))
    }

    /// Starts netprobe's server in `ns` on `binds` (TCP, UDP, ICMP observer), its observations
    /// in `output(name)`, and waits until it listens.
    func startServer(_ name: String, in ns: String, binds: [String]) async throws {
        let ready = "\(dir)/\(name).ready"
        let process = try spawn(name, netprobe(ns, [
            "serve", "--bind", binds.joined(separator: ","),
            "--tcp", "\(Self.tcpPort)", "--udp", "\(Self.udpPort)", "--icmp",
            "--ready", ready, "--lifetime", "600",
        ]))
        try await waitUntil("the \(name) listens", timeout: .seconds(15)) {
            guard process.isRunning else {
                throw CommandError(description: "the \(name) exited: \(self.errors(name))")
            }
            return FileManager.default.fileExists(atPath: ready)
        }
    }

    /// What the outside server logged, one observation a line ("tcp IP:PORT", "icmp IP TOKEN").
    var serverObservations: [String] {
        output("server").split(separator: "\n").map(String.init)
    }

    /// Runs one netprobe client in a pod and returns its result.
    func probe(_ ns: String, _ args: [String]) async throws -> CommandResult {
        try await Command.run(netprobe(ns, args), timeout: .seconds(30))
    }

    // MARK: masqd

    /// The masqd under test: MASQD_BIN, else beside the test bundle, else the package's .build.
    static func masqdBinary() throws -> String {
        var candidates: [String] = []
        if let env = ProcessInfo.processInfo.environment["MASQD_BIN"], !env.isEmpty {
            candidates.append(env)
        }
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append(URL(fileURLWithPath: exe).deletingLastPathComponent()
                .appendingPathComponent("masqd").path)
        }
        let packageRoot = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(packageRoot.appendingPathComponent(".build/debug/masqd").path)
        for candidate in candidates where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        throw CommandError(description: "masqd not found (tried \(candidates)); build it or set MASQD_BIN")
    }

    /// The flags every masqd of this sandbox gets; `overrides` replaces or adds flags by name.
    func masqdArgs(mode: AttachScenario, overrides: KeyValuePairs<String, String> = [:]) -> [String] {
        masqdArgs(mode: mode, overrides: overrides.map { ($0.key, $0.value) })
    }

    func masqdArgs(mode: AttachScenario, overrides: [(String, String)]) -> [String] {
        var flags: [(String, String)] = [
            ("--pod-cidrs", Self.podCIDR + (dualStack ? ",\(Self.podCIDRv6)" : "")),
            ("--devices", Self.device),
            ("--enable-ip-masq-agent", "true"),
            ("--ip-masq-agent-config-path", ipMasqAgentFile),
            ("--bpffs-root", bpffsRoot),
            ("--socket-path", socketPath),
            ("--attach-mode", mode.rawValue),
            ("--log-level", "debug"),
        ]
        for (flag, value) in overrides {
            if let i = flags.firstIndex(where: { $0.0 == flag }) { flags[i].1 = value } else { flags.append((flag, value)) }
        }
        return flags.flatMap { [$0.0, $0.1] }
    }

    /// Starts `masqd run` in the node namespace and waits for its "masqd ready" line;
    /// `overrides` replaces or adds flags by name.
    @discardableResult
    func startMasqd(mode: AttachScenario, overrides: KeyValuePairs<String, String>) async throws -> ChildProcess {
        try await startMasqd(mode: mode, overrides: overrides.map { ($0.key, $0.value) })
    }

    @discardableResult
    func startMasqd(mode: AttachScenario, overrides: [(String, String)] = []) async throws -> ChildProcess {
        masqdRuns += 1
        let name = "masqd\(masqdRuns)"
        let process = try spawn(name, nsenter(node, [try Self.masqdBinary(), "run"]
            + masqdArgs(mode: mode, overrides: overrides)))
        masqd = process
        try await waitUntil("masqd logs 'masqd ready'", timeout: .seconds(60)) {
            if self.errors(name).contains("masqd ready") { return true }
            guard process.isRunning else {
                throw CommandError(description:
                    "masqd exited with \(process.terminationStatus) before ready.\n\(self.masqdLog)")
            }
            return false
        }
        return process
    }

    /// `masqd uninstall` of this sandbox's bpffs-root, run in namespace `ns` (the node's unless
    /// told).
    func uninstall(in ns: String? = nil) async throws -> CommandResult {
        try await Command.run(nsenter(ns ?? node, [try Self.masqdBinary(), "uninstall", "--bpffs-root", bpffsRoot]),
                              timeout: .seconds(60))
    }

    /// SIGTERM to masqd; returns its exit status.
    func stopMasqd() async throws -> Int32 {
        guard let process = masqd else { throw CommandError(description: "masqd is not running") }
        kill(process.processIdentifier, SIGTERM)
        guard await Command.waitForExit(process, timeout: .seconds(20)) else {
            throw CommandError(description: "masqd still runs 20 s after SIGTERM")
        }
        masqd = nil
        return process.terminationStatus
    }

    /// The last lines masqd wrote, for failure messages.
    var masqdLog: String {
        guard masqdRuns > 0 else { return "(masqd not started)" }
        let lines = errors("masqd\(masqdRuns)").split(separator: "\n").suffix(40)
        return "masqd log (last lines):\n" + lines.joined(separator: "\n")
    }

    // MARK: attachments

    /// What is attached to ext0: tc filters on either hook and tcx program ids.
    struct Attachments: CustomStringConvertible {
        var tcIngress: String
        var tcEgress: String
        var tcxIngress: [Int]
        var tcxEgress: [Int]
        var hasTC: Bool { tcIngress.contains("bpf") || tcEgress.contains("bpf") }
        var hasTCX: Bool { !tcxIngress.isEmpty || !tcxEgress.isEmpty }
        var isEmpty: Bool { !hasTC && !hasTCX }
        var description: String {
            "tc ingress: [\(tcIngress)] tc egress: [\(tcEgress)] tcx ingress: \(tcxIngress) tcx egress: \(tcxEgress)"
        }
    }

    func attachments() async throws -> Attachments {
        // `tc filter show` fails when there is no clsact qdisc at all: that means no filters.
        let ingress = try await Command.run(["tc", "-n", node, "filter", "show", "dev", Self.device, "ingress"])
        let egress = try await Command.run(["tc", "-n", node, "filter", "show", "dev", Self.device, "egress"])
        let query = try await sh(netprobe(node, ["progquery", "--dev", Self.device]))
        struct TCX: Decodable { var tcx_ingress: [Int]; var tcx_egress: [Int] }
        let tcx = try JSONDecoder().decode(TCX.self, from: Data(query.stdout.utf8))
        return Attachments(
            tcIngress: ingress.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
            tcEgress: egress.stdout.trimmingCharacters(in: .whitespacesAndNewlines),
            tcxIngress: tcx.tcx_ingress, tcxEgress: tcx.tcx_egress)
    }

    /// Everything in the sandbox's bpffs (relative paths, so "masq" is the --bpffs-root itself),
    /// less the kernel's own iterator files (bpf_preload puts `maps.debug` and `progs.debug` in
    /// every new bpffs).
    func bpffsEntries() -> [String] {
        let enumerator = FileManager.default.enumerator(atPath: bpffsMount)
        let entries = (enumerator?.allObjects as? [String]) ?? []
        return entries.filter { $0 != "maps.debug" && $0 != "progs.debug" }.sorted()
    }

    // MARK: waiting

    /// Polls `condition` every 50 ms until it holds; throws after `timeout`.
    func waitUntil(
        _ what: String, timeout: Duration, _ condition: () throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while try !condition() {
            guard ContinuousClock.now < deadline else {
                throw CommandError(description: "timed out waiting until \(what)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// A process-wide counter (sandboxes, ConfigMap versions).
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func next() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value
    }
}
