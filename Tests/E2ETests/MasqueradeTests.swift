import API
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// masqd and real traffic in network namespaces; see `Sandbox` for the topology.
/// Serialized: each scenario builds its own namespaces, but two masqd starts at once would only
/// make the timing of both worse on a small CI machine.
@Suite("masquerading end to end", .serialized)
struct MasqueradeTests {
    @Test("a pod's TCP, UDP and ICMP echo reach the outside from the node's address, and the replies reach the pod",
          arguments: AttachScenario.allCases)
    func masqueradesPodTraffic(mode: AttachScenario) async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: mode)
            let server = Sandbox.outsideIP

            for (pod, podIP) in zip(sandbox.pods, Sandbox.podIPs) {
                let tcp = try await sandbox.probe(pod, ["tcp", "--dst", "\(server):\(Sandbox.tcpPort)"])
                #expect(tcp.succeeded, "TCP from \(podIP) got no answer: \(tcp)\n\(sandbox.masqdLog)")
                #expect(observedIP(tcp) == Sandbox.nodeIP, "TCP from \(podIP): \(tcp)")

                let udp = try await sandbox.probe(pod, ["udp", "--dst", "\(server):\(Sandbox.udpPort)"])
                #expect(udp.succeeded, "UDP from \(podIP) got no answer: \(udp)\n\(sandbox.masqdLog)")
                #expect(observedIP(udp) == Sandbox.nodeIP, "UDP from \(podIP): \(udp)")

                let token = "echo-\(mode)-\(pod.suffix(4))"
                let ping = try await sandbox.probe(pod, ["ping", "--dst", server, "--token", token])
                #expect(ping.succeeded, "ICMP echo from \(podIP) got no reply: \(ping)\n\(sandbox.masqdLog)")
                let sources = sandbox.serverObservations
                    .filter { $0.hasPrefix("icmp ") && $0.hasSuffix(" " + token) }
                    .map { $0.split(separator: " ")[1] }
                #expect(!sources.isEmpty && sources.allSatisfy { $0 == Sandbox.nodeIP },
                        "ICMP echo sources seen outside for \(podIP): \(sources)")
            }
            let sources = sandbox.serverObservations.map { $0.split(separator: " ").dropFirst().first ?? "" }
            #expect(!sources.contains { $0.hasPrefix("10.244.1.") },
                    "the outside saw a pod address: \(sandbox.serverObservations)")
        }
    }

    @Test("a destination in the ip-masq-agent non-masquerade list sees the pod's own address",
          arguments: AttachScenario.allCases)
    func keepsPodAddressForExcludedDestination(mode: AttachScenario) async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: mode)
            let pod = sandbox.pods[0], podIP = Sandbox.podIPs[0]
            let server = Sandbox.excludedIP

            let tcp = try await sandbox.probe(pod, ["tcp", "--dst", "\(server):\(Sandbox.tcpPort)"])
            #expect(tcp.succeeded, "\(tcp)\n\(sandbox.masqdLog)")
            #expect(observedIP(tcp) == podIP, "TCP: \(tcp)")

            let udp = try await sandbox.probe(pod, ["udp", "--dst", "\(server):\(Sandbox.udpPort)"])
            #expect(udp.succeeded, "\(udp)\n\(sandbox.masqdLog)")
            #expect(observedIP(udp) == podIP, "UDP: \(udp)")

            let token = "excluded-\(mode)"
            let ping = try await sandbox.probe(pod, ["ping", "--dst", server, "--token", token])
            #expect(ping.succeeded, "\(ping)\n\(sandbox.masqdLog)")
            let sources = sandbox.serverObservations
                .filter { $0.hasPrefix("icmp ") && $0.hasSuffix(" " + token) }
                .map { $0.split(separator: " ")[1] }
            #expect(!sources.isEmpty && sources.allSatisfy { $0 == podIP }, "ICMP sources: \(sources)")
        }
    }

    @Test("two pods using the same source port to the same server both work, on distinct node ports",
          arguments: AttachScenario.allCases)
    func separatesSameSourcePortFromTwoPods(mode: AttachScenario) async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: mode)
            let server = Sandbox.outsideIP
            let tcpPort = "40000", udpPort = "40001"

            // TCP: pod1's connection stays open while pod2 connects from the same port.
            let first = try Session(sandbox, pod: sandbox.pods[0], name: "session1",
                                    dst: "\(server):\(Sandbox.tcpPort)", sport: tcpPort)
            let firstAnswer = try await first.exchange()
            let second = try await sandbox.probe(sandbox.pods[1],
                ["tcp", "--dst", "\(server):\(Sandbox.tcpPort)", "--sport", tcpPort])
            #expect(second.succeeded, "pod2's TCP connection: \(second)\n\(sandbox.masqdLog)")
            let againAnswer = try await first.exchange()
            #expect(againAnswer == firstAnswer, "pod1's connection changed its observed address")
            let tcpSeen = [firstAnswer, observed(second)]
            #expect(tcpSeen.allSatisfy { $0.hasPrefix(Sandbox.nodeIP + ":") }, "TCP observed: \(tcpSeen)")
            #expect(Set(tcpSeen).count == 2, "both pods' TCP flows got the same node port: \(tcpSeen)")

            // UDP: the first mapping is still alive when the second datagram comes.
            let udp1 = try await sandbox.probe(sandbox.pods[0],
                ["udp", "--dst", "\(server):\(Sandbox.udpPort)", "--sport", udpPort])
            let udp2 = try await sandbox.probe(sandbox.pods[1],
                ["udp", "--dst", "\(server):\(Sandbox.udpPort)", "--sport", udpPort])
            #expect(udp1.succeeded && udp2.succeeded, "UDP: \(udp1)\n\(udp2)\n\(sandbox.masqdLog)")
            let udpSeen = [observed(udp1), observed(udp2)]
            #expect(udpSeen.allSatisfy { $0.hasPrefix(Sandbox.nodeIP + ":") }, "UDP observed: \(udpSeen)")
            #expect(Set(udpSeen).count == 2, "both pods' UDP flows got the same node port: \(udpSeen)")
            first.close()
        }
    }

    @Test("an established TCP connection keeps exchanging data while masqd is stopped and after it restarts",
          arguments: AttachScenario.allCases)
    func keepsConnectionAcrossRestart(mode: AttachScenario) async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: mode)
            let session = try Session(sandbox, pod: sandbox.pods[0], name: "session",
                                      dst: "\(Sandbox.outsideIP):\(Sandbox.tcpPort)")
            let before = try await session.exchange()
            #expect(before.hasPrefix(Sandbox.nodeIP + ":"), "observed before the restart: \(before)")

            let status = try await sandbox.stopMasqd()
            #expect(status == 0, "masqd's exit status on SIGTERM\n\(sandbox.masqdLog)")
            let whileStopped = try await session.exchange()
            #expect(whileStopped == before, "while masqd is stopped")

            try await sandbox.startMasqd(mode: mode)
            let after = try await session.exchange()
            #expect(after == before, "after the restart\n\(sandbox.masqdLog)")
            let fresh = try await sandbox.probe(sandbox.pods[1],
                ["tcp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.tcpPort)"])
            #expect(observedIP(fresh) == Sandbox.nodeIP, "a new flow after the restart: \(fresh)")
            session.close()
        }
    }

    @Test("masqd uninstall leaves no programs on the device and nothing under the bpffs root",
          arguments: AttachScenario.allCases)
    func uninstallRemovesEverything(mode: AttachScenario) async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startMasqd(mode: mode)
            let attached = try await sandbox.attachments()
            switch mode {
            case .tcx:
                #expect(attached.tcxIngress.count == 1 && attached.tcxEgress.count == 1 && !attached.hasTC,
                        "with tcx: \(attached)")
            case .tc:
                #expect(attached.hasTC && !attached.hasTCX, "with tc: \(attached)")
            }
            #expect(sandbox.bpffsEntries().contains { $0.hasPrefix("masq/") },
                    "nothing pinned under \(sandbox.bpffsRoot): \(sandbox.bpffsEntries())")

            let status = try await sandbox.stopMasqd()
            #expect(status == 0, "masqd's exit status on SIGTERM\n\(sandbox.masqdLog)")
            let afterStop = try await sandbox.attachments()
            #expect(!afterStop.isEmpty, "SIGTERM must leave the programs attached: \(afterStop)")

            let uninstall = try await sandbox.uninstall()
            #expect(uninstall.succeeded, "\(uninstall)")
            let left = try await sandbox.attachments()
            #expect(left.isEmpty, "left on \(Sandbox.device) after uninstall: \(left)")
            #expect(sandbox.bpffsEntries().allSatisfy { $0 == "masq" },
                    "left under the bpffs root: \(sandbox.bpffsEntries())")
        }
    }

    @Test("programs and pins removed behind masqd's back (the clsact qdisc deleted, the pins removed) are back within the resync, and pod traffic is masqueraded again",
          arguments: AttachScenario.allCases)
    func repairsDatapathTakenAway(mode: AttachScenario) async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: mode)
            let pod = sandbox.pods[0]
            let dst = "\(Sandbox.outsideIP):\(Sandbox.udpPort)"
            let before = try await sandbox.probe(pod, ["udp", "--dst", dst])
            #expect(observedIP(before) == Sandbox.nodeIP, "\(before)\n\(sandbox.masqdLog)")
            let pins = sandbox.bpffsEntries().filter { $0.hasPrefix("masq/") }
            switch mode {
            case .tc:
                try await sandbox.sh(["tc", "-n", sandbox.node, "qdisc", "del", "dev", Sandbox.device, "clsact"])
                // The whole root, its lock and network namespace mark with it.
                try FileManager.default.removeItem(atPath: sandbox.bpffsRoot)
            case .tcx:
                // Unpinning a tcx link nobody else holds destroys it, which detaches the program.
                try FileManager.default.removeItem(atPath: sandbox.bpffsRoot + "/links")
                try FileManager.default.removeItem(atPath: sandbox.bpffsRoot + "/masq_nat_v4")
            }
            #expect(try await sandbox.attachments().isEmpty)

            // The resync runs every 10 s: back within two.
            let deadline = ContinuousClock.now + .seconds(25)
            var repaired = false
            while !repaired && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(500))
                repaired = !(try await sandbox.attachments().isEmpty) && sandbox.bpffsEntries().filter { $0.hasPrefix("masq/") } == pins
            }
            let attached = try await sandbox.attachments()
            #expect(repaired, "not repaired: \(attached), pins \(sandbox.bpffsEntries())\n\(sandbox.masqdLog)")
            let after = try await sandbox.probe(pod, ["udp", "--dst", dst])
            #expect(observedIP(after) == Sandbox.nodeIP, "\(after)\n\(sandbox.masqdLog)")
            #expect(sandbox.masqdLog.contains("changed behind masqd's back"), "\(sandbox.masqdLog)")
            // The root is masqd's again: uninstall still refuses while it runs.
            let uninstall = try await sandbox.uninstall()
            #expect(uninstall.status == 1 && uninstall.stderr.contains("a masqd is running"), "\(uninstall)")
        }
    }

    @Test("masqd uninstall refuses while masqd runs, and from another network namespace than masqd's; nothing is removed until it runs there")
    func uninstallRefusesWhereItWouldOrphan() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startMasqd(mode: .tc)
            let pins = sandbox.bpffsEntries()
            let whileRunning = try await sandbox.uninstall()
            #expect(whileRunning.status == 1 && whileRunning.stderr.contains("a masqd is running on these pinned maps"), "\(whileRunning)")
            #expect(sandbox.bpffsEntries() == pins)
            #expect(try await sandbox.stopMasqd() == 0)

            // A pod's namespace is another one: there, ext0's ifindex is no device of masq's.
            let elsewhere = try await sandbox.uninstall(in: sandbox.pods[0])
            #expect(elsewhere.status == 1 && elsewhere.stderr.contains("masqd attached its programs in network namespace"), "\(elsewhere)")
            #expect(sandbox.bpffsEntries() == pins)
            #expect(try await sandbox.attachments().hasTC)

            let there = try await sandbox.uninstall()
            #expect(there.succeeded && there.stderr.contains("Detached"), "\(there)")
            #expect(try await sandbox.attachments().isEmpty)
            #expect(sandbox.bpffsEntries().allSatisfy { $0 == "masq" }, "\(sandbox.bpffsEntries())")
        }
    }

    @Test("a second masqd with another bpffs-root refuses to start when every device is one the first runs on (tcx), rather than translating beside it; with a free device too it starts there and skips the taken one")
    func secondRootRefusesTakenDevice() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx)
            let first = try await sandbox.attachments()
            let second = try sandbox.spawn("second", sandbox.nsenter(sandbox.node, [try Sandbox.masqdBinary(), "run"]
                + sandbox.masqdArgs(mode: .tcx, overrides: ["--bpffs-root": sandbox.bpffsMount + "/second",
                                                            "--socket-path": sandbox.dir + "/second.sock"])))
            #expect(await Command.waitForExit(second, timeout: .seconds(60)))
            #expect(second.terminationStatus != 0)
            #expect(sandbox.errors("second").contains("already runs there, attached by a masqd with another bpffs-root"),
                    "\(sandbox.errors("second"))")
            let after = try await sandbox.attachments()
            #expect(after.tcxIngress == first.tcxIngress && after.tcxEgress == first.tcxEgress, "\(first) then \(after)")
            let tcp = try await sandbox.probe(sandbox.pods[0], ["tcp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.tcpPort)"])
            #expect(observedIP(tcp) == Sandbox.nodeIP, "\(tcp)\n\(sandbox.masqdLog)")

            // A free device beside the taken one: it starts there.
            try await sandbox.addUplink(up: true)
            let socket = sandbox.dir + "/third.sock"
            try await sandbox.startOtherMasqd("third", sandbox.masqdArgs(mode: .tcx, overrides: [
                "--bpffs-root": sandbox.bpffsMount + "/third", "--socket-path": socket,
                "--devices": "\(Sandbox.device),\(DeviceE2ETests.uplink)"]))
            let (started, healthy) = try await sandbox.status(socket: socket)
            #expect(healthy && started.devices.map(\.name) == [DeviceE2ETests.uplink], "\(started.devices) \(started.health)")
            #expect(started.skippedDevices.contains { $0.name == Sandbox.device && $0.reason.contains("attached by a masqd with another bpffs-root") },
                    "\(started.skippedDevices)")
            let still = try await sandbox.attachments()
            #expect(still.tcxIngress == first.tcxIngress && still.tcxEgress == first.tcxEgress, "\(first) then \(still)")
        }
    }

    @Test("a device another masqd (another bpffs-root) runs on, met at runtime by SIGHUP, is skipped with the reason: the other devices apply, health stays up, and the resync takes it up once that masqd is gone")
    func takenDeviceAtRuntimeIsSkipped() async throws {
        try await Sandbox.with { sandbox in
            let uplink = DeviceE2ETests.uplink
            try await sandbox.addUplink(up: true)
            try await sandbox.startServers()
            try await sandbox.startServer(name: "server-uplink", bind: DeviceE2ETests.uplinkPeerIP)
            // The other masqd: the sandbox's root, on the second uplink.
            try await sandbox.startMasqd(mode: .tcx, overrides: ["--devices": uplink])
            // This one: its own root, its devices from a config file (a --devices flag would
            // outlive the reload), ext0 at start.
            let configFile = "\(sandbox.dir)/second.yaml"
            try "devices: [\(Sandbox.device)]\n".write(toFile: configFile, atomically: true, encoding: .utf8)
            let socket = sandbox.dir + "/second.sock", root = sandbox.bpffsMount + "/second"
            var args = sandbox.masqdArgs(mode: .tcx, overrides: ["--bpffs-root": root, "--socket-path": socket,
                                                                 "--config": configFile])
            if let flag = args.firstIndex(of: "--devices") { args.removeSubrange(flag...flag + 1) }
            let second = try await sandbox.startOtherMasqd("second", args)

            try "devices: [\(Sandbox.device), \(uplink)]\n".write(toFile: configFile, atomically: true, encoding: .utf8)
            kill(second.processIdentifier, SIGHUP)
            let reason = "already runs there, attached by a masqd with another bpffs-root"
            try await sandbox.waitUntil("\(uplink) is skipped as taken", timeout: .seconds(15)) {
                sandbox.errors("second").contains("Configured device not in force") && sandbox.errors("second").contains(reason)
            }
            // Past a resync, which looks at the taken device again.
            try await Task.sleep(for: .seconds(12))
            let (taken, healthy) = try await sandbox.status(socket: socket)
            #expect(taken.skippedDevices.contains { $0.name == uplink && $0.reason.contains(reason) }, "\(taken.skippedDevices)")
            #expect(taken.devices.map(\.name) == [Sandbox.device], "\(taken.devices)")
            #expect(healthy && taken.health.state == .warning && taken.health.message?.contains("device \(uplink): ") == true,
                    "\(taken.health)")
            let log = sandbox.errors("second")
            #expect(!log.contains("Reconcile failed"), "\(log)")
            let told = log.split(separator: "\n").filter { $0.contains("Configured device not in force") && $0.contains(uplink) }
            #expect(told.count == 1, "told \(told.count) times:\n\(log)")
            let ifindex = try await sandbox.ifindex(uplink)
            #expect(try !sandbox.devicesMapKeys(root: root).contains(ifindex))
            #expect(!sandbox.bpffsEntries().contains { $0.hasPrefix("second/links/tcx_\(ifindex)_") }, "\(sandbox.bpffsEntries())")
            let onUplink = try sandbox.attachmentsSync(of: uplink)
            #expect(onUplink.tcxIngress.count == 1 && onUplink.tcxEgress.count == 1, "\(onUplink)")
            // Each uplink masquerades by its own masqd.
            let viaExt0 = try await sandbox.probe(sandbox.pods[0], ["udp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.udpPort)"])
            #expect(observedIP(viaExt0) == Sandbox.nodeIP, "\(viaExt0)\n\(log)")
            let viaUplink = try await sandbox.probe(sandbox.pods[0], ["udp", "--dst", "\(DeviceE2ETests.uplinkPeerIP):\(Sandbox.udpPort)"])
            #expect(observedIP(viaUplink) == DeviceE2ETests.uplinkIP, "\(viaUplink)")

            // The other masqd goes, with its programs: the resync takes the device up.
            #expect(try await sandbox.stopMasqd() == 0)
            let uninstall = try await sandbox.uninstall()
            #expect(uninstall.succeeded, "\(uninstall)")
            try await sandbox.waitUntil("the second masqd takes \(uplink) up", timeout: .seconds(25)) {
                sandbox.bpffsEntries().contains("second/links/tcx_\(ifindex)_egress")
            }
            let (after, _) = try await sandbox.status(socket: socket)
            #expect(after.devices.map(\.name).sorted() == [Sandbox.device, uplink].sorted() && after.skippedDevices.isEmpty,
                    "\(after.devices) \(after.skippedDevices)")
            #expect(after.health.state == .ok, "\(after.health)")
            let taken2 = try await sandbox.probe(sandbox.pods[1], ["udp", "--dst", "\(DeviceE2ETests.uplinkPeerIP):\(Sandbox.udpPort)"])
            #expect(observedIP(taken2) == DeviceE2ETests.uplinkIP, "\(taken2)\n\(sandbox.errors("second"))")
        }
    }

    @Test("in tc mode masqd shares the clsact qdisc: another tool's filter keeps running beside it and stays after uninstall")
    func coexistsWithOtherTCFilters() async throws {
        try await Sandbox.with { sandbox in
            // Another tool's program, ahead of masq's (priority 1), that sends every packet on to
            // the next filter, as a well-behaved program does.
            let pin = sandbox.bpffsMount + "/other-tool"
            try await sandbox.sh(sandbox.netprobe(sandbox.node, ["passprog", "--pin", pin]))
            let tc = ["tc", "-n", sandbox.node]
            try await sandbox.sh(tc + ["qdisc", "add", "dev", Sandbox.device, "clsact"])
            for hook in ["ingress", "egress"] {
                try await sandbox.sh(tc + ["filter", "add", "dev", Sandbox.device, hook, "prio", "1",
                                           "bpf", "da", "object-pinned", pin])
            }
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tc)

            let tcp = try await sandbox.probe(sandbox.pods[0], ["tcp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.tcpPort)"])
            #expect(observedIP(tcp) == Sandbox.nodeIP, "\(tcp)\n\(sandbox.masqdLog)")

            #expect(try await sandbox.stopMasqd() == 0)
            let uninstall = try await sandbox.uninstall()
            #expect(uninstall.succeeded, "\(uninstall)")
            for hook in ["ingress", "egress"] {
                let left = try await sandbox.sh(tc + ["filter", "show", "dev", Sandbox.device, hook])
                #expect(left.stdout.contains("pref 1 bpf"), "the other tool's \(hook) filter is gone: \(left.stdout)")
                #expect(!left.stdout.contains("masq_"), "masq's \(hook) filter is still there: \(left.stdout)")
            }
        }
    }

    @Test("a bad config exits non-zero with an error naming the key, and attaches nothing",
          arguments: [
              BadConfig(key: "pod-cidrs", value: "10.244.1.0/33"),
              BadConfig(key: "snat-port-range", value: "65535-1024"),
              BadConfig(key: "enable-ip-masq-agent", value: "sometimes"),
          ])
    func rejectsBadConfig(bad: BadConfig) async throws {
        try await Sandbox.with { sandbox in
            let argv = sandbox.nsenter(sandbox.node, [try Sandbox.masqdBinary(), "run"]
                + sandbox.masqdArgs(mode: .tcx, overrides: ["--\(bad.key)": bad.value]))
            let result = try await Command.run(argv, timeout: .seconds(30))
            #expect(!result.timedOut && result.status != 0, "masqd accepted --\(bad.key) \(bad.value): \(result)")
            #expect(result.stderr.contains(bad.key),
                    "the error does not name \(bad.key): \(result.stderr)")
            #expect(!result.stderr.contains("masqd ready"), "\(result.stderr)")
            let attached = try await sandbox.attachments()
            #expect(attached.isEmpty, "attached despite the bad config: \(attached)")
            #expect(sandbox.bpffsEntries().allSatisfy { $0 == "masq" },
                    "pinned despite the bad config: \(sandbox.bpffsEntries())")
        }
    }
}

/// A flag with a bad value; the error must name the key.
struct BadConfig: Sendable, CustomTestStringConvertible {
    var key: String
    var value: String
    var testDescription: String { "--\(key) \(value)" }
}

/// A long-lived TCP connection from a pod (netprobe.py session), driven one exchange at a time.
final class Session: @unchecked Sendable {
    private let sandbox: Sandbox
    private let name: String
    private let input = Pipe()
    private let process: ChildProcess

    init(_ sandbox: Sandbox, pod: String, name: String, dst: String, sport: String? = nil) throws {
        // A write to a session that already ended must fail, not kill the test process.
        signal(SIGPIPE, SIG_IGN)
        self.sandbox = sandbox
        self.name = name
        var args = ["session", "--dst", dst, "--lifetime", "300"]
        if let sport { args += ["--sport", sport] }
        process = try sandbox.spawn(name, sandbox.netprobe(pod, args), stdin: input)
    }

    private var lines: [String] {
        sandbox.output(name).split(separator: "\n").map(String.init)
    }

    /// Sends one line and returns the address the server observed ("ip:port").
    func exchange() async throws -> String {
        let answered = lines.filter { $0.hasPrefix("ok ") || $0.hasPrefix("err ") }.count
        try input.fileHandleForWriting.write(contentsOf: Data("x\n".utf8))
        try await sandbox.waitUntil("the session's exchange completes", timeout: .seconds(15)) {
            if self.lines.filter({ $0.hasPrefix("ok ") || $0.hasPrefix("err ") }).count > answered {
                return true
            }
            guard self.process.isRunning else {
                throw CommandError(description: "the session ended: \(self.sandbox.output(self.name)) \(self.sandbox.errors(self.name))")
            }
            return false
        }
        let last = lines.last { $0.hasPrefix("ok ") || $0.hasPrefix("err ") } ?? ""
        guard last.hasPrefix("ok ") else {
            throw CommandError(description: "the session failed: \(last)\n\(sandbox.masqdLog)")
        }
        return String(last.dropFirst(3))
    }

    func close() {
        try? input.fileHandleForWriting.write(contentsOf: Data("q\n".utf8))
    }
}

/// The "ip:port" a netprobe client printed (what the server observed).
private func observed(_ result: CommandResult) -> String {
    result.stdout.split(separator: "\n").last.map(String.init) ?? ""
}

/// The address part of what the server observed.
extension Sandbox {
    /// Starts another `masqd run` in the node namespace with exactly `args` (its own
    /// --bpffs-root and --socket-path), logging to `name`.err, and waits until it is ready.
    @discardableResult
    func startOtherMasqd(_ name: String, _ args: [String]) async throws -> ChildProcess {
        let process = try spawn(name, nsenter(node, [try Self.masqdBinary(), "run"] + args))
        try await waitUntil("\(name) logs 'masqd ready'", timeout: .seconds(60)) {
            guard process.isRunning else { throw CommandError(description: "\(name) exited before ready:\n\(errors(name))") }
            return errors(name).contains("masqd ready")
        }
        return process
    }

    /// The status of the masqd at `socket` (masq-client status), and whether the client found
    /// it healthy (its healthz not 503).
    func status(socket: String) async throws -> (StatusResponse, healthy: Bool) {
        let result = try await Command.run([try Self.clientBinary(), "status", "-o", "json", "--socket", socket],
                                           timeout: .seconds(30))
        return (try APIJSON.decoder().decode(StatusResponse.self, from: Data(result.stdout.utf8)), result.succeeded)
    }
}

func observedIP(_ result: CommandResult) -> String {
    String(observed(result).split(separator: ":").first ?? "")
}
