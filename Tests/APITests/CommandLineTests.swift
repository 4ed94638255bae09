@preconcurrency import Glibc
import API
@testable import Daemon
import Foundation
@testable import MasqdCLI
import Testing

/// masqd's command line: what a mistyped command or a broken config file prints.
@Suite("masqd command line")
struct CommandLineTests {
    @Test("an unknown subcommand is reported as one, exit 64")
    func unknownSubcommand() async throws {
        let masqd = try builtBinary("masqd")
        let result = try await run([masqd, "frobnicate"])
        #expect(result.status == 64)
        #expect(result.stderr == "masqd: unknown subcommand 'frobnicate' (subcommands: run, uninstall, help; see masqd --help)\n",
                "\(result.stderr)")
        #expect(!result.stderr.contains("Usage"))
    }

    @Test("a list flag given again adds to the list (Cilium's string slices do) and wins over the file's; a scalar flag keeps the last")
    func repeatedFlags() throws {
        let file = try ConfigFile.parse("pod-cidrs: [10.0.0.0/8]\ndevices: [eth9]\ncluster-node-ips: [100.0.0.9]\nlog-level: info\n",
                                        path: "test.yaml")
        let run = try MasqdCommand.Run.parse([
            "--pod-cidrs", "10.244.0.0/16,fd00::/48", "--pod-cidrs", "10.245.0.0/16",
            "--cluster-node-ips", "100.0.0.2", "--cluster-node-ips=100.0.0.3",
            "--devices", "eth0", "--devices", "ext+", "--log-level", "debug", "--log-level", "error",
        ])
        let config = try DaemonConfig(file: file, flags: run.flagSettings())
        #expect(config.podCIDRs.map(\.description) == ["10.244.0.0/16", "fd00::/48", "10.245.0.0/16"])
        #expect(config.clusterNodeIPs.map(\.description) == ["100.0.0.2", "100.0.0.3"])
        #expect(config.devices.map(\.description) == ["eth0", "ext+"])
        #expect(config.logLevel == .error)
        // Every list key, so that one declared later cannot keep only its last flag.
        for key in ConfigKey.allCases where key.spec.kind == .list {
            let run = try MasqdCommand.Run.parse(["--\(key.rawValue)", "a", "--\(key.rawValue)", "b,c"])
            #expect(run.flagSettings()[key]?.items == ["a", "b", "c"], "--\(key.rawValue) given twice")
        }
    }

    @Test("a YAML syntax error is one line naming the file and the line, exit 2")
    func yamlSyntaxError() async throws {
        let masqd = try builtBinary("masqd")
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("masqd-bad-\(getpid()).yaml").path
        defer { unlink(path) }
        try "pod-cidrs: [10.244.0.0/16]\ndevices: [eth0\nlog-level: debug\n".write(toFile: path, atomically: true, encoding: .utf8)
        let result = try await run([masqd, "run", "--config", path])
        #expect(result.status == 2)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(result.stderr)")
        #expect(lines.first?.hasPrefix("masqd: config: config file \(path) (line ") == true, "\(result.stderr)")
    }

    @Test("a prometheus-serve-addr that is no address literal is one line naming the key, exit 2, before anything starts")
    func serveAddressNotLiteral() async throws {
        let masqd = try builtBinary("masqd")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("masqd-addr-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let result = try await run([masqd, "run", "--pod-cidrs", "10.244.0.0/16", "--devices", "masqtest-none0",
                                    "--bpffs-root", dir + "/bpf", "--socket-path", dir + "/masqd.sock",
                                    "--prometheus-serve-addr", "999.1.1.1:80"])
        #expect(result.status == 2)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1 && lines.first?.contains("prometheus-serve-addr") == true, "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/bpf"))
    }
}

extension LiveAPITests {
@Suite("masqd uninstall", .serialized)
struct UninstallTests {
    static func isMountPoint(_ path: String) -> Bool {
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        return mounts.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first == Substring(path) }
    }

    @Test("a second masqd on a running one's bpffs root or socket stops with one error, touching neither; the first goes on serving")
    func secondInstanceStops() async throws {
        let masqd = try builtBinary("masqd")
        try await DaemonSandbox.with { sandbox in
            try await sandbox.addDevice()
            let first = try sandbox.start([masqd, "run"] + sandbox.masqdFlags())
            try await sandbox.waitHealthy()
            let other = sandbox.dir + "/other"
            try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
            for (flags, expected) in [([String](), "socket-path \(sandbox.socketPath): another masqd is serving there"),
                                      (["--socket-path", other + "/masqd.sock"], "bpffs-root \(sandbox.bpffs): another masqd is running on these pinned maps"),
                                      (["--bpffs-root", other + "/bpffs"], "socket-path \(sandbox.socketPath): another masqd is serving there")] {
                // Different flags first: the second daemon's own config must not reach the maps.
                let second = try await run(["/usr/bin/timeout", "60", "/usr/bin/nsenter", "--net=/run/netns/\(sandbox.name)", masqd, "run"]
                                           + sandbox.masqdFlags(["--snat-port-range", "50000-50100"] + flags))
                #expect(second.status == 1, "\(flags): \(second.stderr)")
                #expect(second.stderr.contains(expected), "\(flags): \(second.stderr)")
                #expect(!second.stderr.contains("masqd ready"), "\(flags): \(second.stderr)")
            }
            #expect(first.isRunning)
            let health = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/healthz", timeout: .seconds(20))
            #expect(health.status == 200)
            let config = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/config", timeout: .seconds(20))
            #expect(config.text.contains("32768-65535") && !config.text.contains("50000-50100"), "\(config.text)")
        }
    }

    @Test("uninstall unmounts the bpffs masqd mounted itself, and leaves one it found mounted")
    func unmountsOwnBPFFS() async throws {
        let masqd = try builtBinary("masqd")
        try await DaemonSandbox.with { sandbox in
            // A root on no bpffs: masqd mounts one there itself.
            let own = sandbox.dir + "/own"
            try FileManager.default.createDirectory(atPath: own, withIntermediateDirectories: true)
            defer { if Self.isMountPoint(own) { umount2(own, Int32(MNT_DETACH)) } }
            try await sandbox.addDevice()
            let process = try sandbox.start([masqd, "run"] + sandbox.masqdFlags(["--bpffs-root", own]))
            try await sandbox.waitHealthy()
            #expect(Self.isMountPoint(own))
            #expect(sandbox.log.contains("Mounted bpffs"))
            kill(daemonPID(process), SIGTERM)
            let stopped = ContinuousClock.now + .seconds(20)
            while process.isRunning && ContinuousClock.now < stopped { try await Task.sleep(for: .milliseconds(50)) }

            let result = try await run(["/usr/bin/nsenter", "--net=/run/netns/\(sandbox.name)", masqd, "uninstall", "--bpffs-root", own])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stderr.contains("Unmounted the bpffs masqd had mounted"), "\(result.stderr)")
            #expect(!Self.isMountPoint(own))

            // The sandbox's own bpffs (mounted by the test) stays mounted after an uninstall.
            let again = try await run(["/usr/bin/nsenter", "--net=/run/netns/\(sandbox.name)", masqd, "uninstall", "--bpffs-root", sandbox.bpffs])
            #expect(again.status == 0, "\(again.stderr)")
            #expect(Self.isMountPoint(sandbox.bpffs))
        }
    }
}
}
