@preconcurrency import Glibc
import Foundation
import TestSupport
import Synchronization
import Testing

/// A real `masqd` process for tests that need the whole daemon: in a network namespace of its
/// own (only `lo`, so nothing on the host is attached to), with a private bpffs. Torn down
/// (process, namespace, mount, files) on every path.
final class DaemonSandbox: @unchecked Sendable {
    let name: String
    let dir: String
    var bpffs: String { dir + "/bpffs" }
    var socketPath: String { dir + "/masqd.sock" }
    private(set) var process: ChildProcess?
    private var namespace = false
    private var mounted = false

    private static let counter = Mutex(0)

    private init() {
        let n = Self.counter.withLock { $0 += 1; return $0 }
        name = "masqapi-\(getpid())-\(n)"
        dir = "/tmp/\(name)"
    }

    static func with<T>(_ body: (DaemonSandbox) async throws -> T) async throws -> T {
        let sandbox = DaemonSandbox()
        defer { sandbox.teardown() }
        try FileManager.default.createDirectory(atPath: sandbox.bpffs, withIntermediateDirectories: true)
        chmod(sandbox.dir, 0o755)
        guard mount("bpf", sandbox.bpffs, "bpf", 0, nil) == 0 else { throw TestFailure("mount bpffs failed") }
        sandbox.mounted = true
        guard try await run(["/usr/bin/env", "ip", "netns", "add", sandbox.name]).status == 0 else {
            throw TestFailure("ip netns add \(sandbox.name) failed")
        }
        sandbox.namespace = true
        _ = try await run(["/usr/bin/env", "ip", "-n", sandbox.name, "link", "set", "lo", "up"])
        return try await body(sandbox)
    }

    /// masqd's flags for this sandbox: no device exists, so none is attached.
    func masqdFlags(_ extra: [String] = []) -> [String] {
        ["--pod-cidrs", "10.244.1.0/24", "--devices", "ext0", "--bpffs-root", bpffs,
         "--socket-path", socketPath, "--log-level", "debug"] + extra
    }

    /// Starts argv inside the namespace (nsenter keeps the root mount namespace, so the bpffs
    /// stays visible), output to files in the sandbox.
    func start(_ argv: [String], environment: [String: String] = [:]) throws -> ChildProcess {
        let process = try ChildProcess(
            executable: "/usr/bin/nsenter", argv: ["nsenter", "--net=/run/netns/\(name)"] + argv,
            stdout: dir + "/out", stderr: dir + "/err", stdin: nil, environment: environment)
        self.process = process
        return process
    }

    /// Gives the namespace the device masqd is configured for: `ext0`, one end of a veth pair
    /// (this kernel may lack dummy) with an address and the default route, so masqd attaches
    /// to it (inside the namespace only).
    func addDevice() async throws {
        for args in [["link", "add", "ext0", "type", "veth", "peer", "name", "ext0peer"], ["addr", "add", "192.0.2.2/24", "dev", "ext0"],
                     ["link", "set", "ext0peer", "up"], ["link", "set", "ext0", "up"], ["route", "add", "default", "via", "192.0.2.1"]] {
            let result = try await run(["/usr/bin/env", "ip", "-n", name] + args)
            guard result.status == 0 else { throw TestFailure("ip \(args.joined(separator: " ")): \(result.stderr)") }
        }
    }

    var log: String { (try? String(contentsOfFile: dir + "/err", encoding: .utf8)) ?? "" }

    /// Waits until the socket answers healthz with 200.
    func waitHealthy(timeout: Duration = .seconds(60)) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let process, !process.isRunning { throw TestFailure("masqd exited: \(log)") }
            if let r = try? await TestHTTP.request(socketPath: socketPath, method: .GET, uri: "/v1/healthz", timeout: .seconds(20)),
               r.status == 200 {
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestFailure("masqd did not become healthy: \(log)")
    }

    func teardown() {
        if let process { Command.stop(process) }
        if namespace { Command.runSync(["ip", "netns", "delete", name]) }
        if mounted { umount2(bpffs, Int32(MNT_DETACH)) }
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// The peak resident set (VmHWM) and current RSS of a process, in KiB.
func memory(of pid: Int32) -> (peak: Int, current: Int) {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    func field(_ name: String) -> Int {
        for line in text.split(separator: "\n") where line.hasPrefix(name + ":") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
        }
        return 0
    }
    return (field("VmHWM"), field("VmRSS"))
}

/// The pid of masqd under `nsenter` (its only child) or the process itself.
func daemonPID(_ process: ChildProcess) -> Int32 {
    let children = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/task/\(process.processIdentifier)/children",
                                encoding: .utf8)) ?? ""
    return children.split(separator: " ").compactMap { Int32($0) }.first ?? process.processIdentifier
}
