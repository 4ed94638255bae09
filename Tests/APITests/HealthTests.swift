@preconcurrency import Glibc
import API
import Foundation
import Testing

@testable import ControlServer
@testable import Daemon
import Datapath
import NetworkTypes
import Netlink

/// What healthz judges from the daemon's status.
@Suite("health")
struct HealthUnitTests {
    static func snapshot(ready: Bool = true,
                         devices: [DesiredState.Device] = [.init(name: "eth0", ifindex: 2, snatV4: IPv4Address(192, 0, 2, 5), snatV6: nil)],
                         skipped: [String: String] = [:]) throws -> DaemonStatus.Snapshot {
        let config = try DaemonConfig(file: [:], flags: [.podCIDRs: .scalar("10.244.0.0/16")])
        var state = DesiredState(ReconcileInputs(config: config, network: NetworkSnapshot(links: [], defaultRouteDevices: []),
                                                 nonMasquerade: nil))
        state.devices = devices
        state.skippedDevices = skipped
        var snapshot = DaemonStatus.Snapshot()
        snapshot.ready = ready
        snapshot.applied = ready ? state : nil
        return snapshot
    }

    @Test("Ok only with the datapath attached to a device and the last reconcile applied")
    func ok() throws {
        let health = Health.judge(try Self.snapshot())
        #expect(health == HealthResponse(state: .ok) && Health.httpStatus(health) == 200)
    }

    @Test("a device without an address of a family the pods use: Warning naming it, 200; a family without pods is not missed")
    func missingAddress() throws {
        let bare = DesiredState.Device(name: "ext1", ifindex: 3, snatV4: nil, snatV6: nil)
        let health = Health.judge(try Self.snapshot(devices: [.init(name: "eth0", ifindex: 2, snatV4: IPv4Address(192, 0, 2, 5), snatV6: nil), bare]))
        #expect(health.state == .warning && Health.httpStatus(health) == 200)
        #expect(health.message == "ext1: no usable IPv4 address: pod packets that need masquerading are dropped (no_snat_address)", "\(health)")
    }

    @Test("a device another masqd (another bpffs-root) runs on: Warning with its skip reason, 200; other skipped devices are no warning")
    func takenDevice() throws {
        let reason = "device ext1: masq's ingress program (id 7) already runs there, attached by a masqd with another bpffs-root"
        var snapshot = try Self.snapshot(skipped: ["ext1": reason, "ext2": "no such device"])
        #expect(Health.judge(snapshot) == HealthResponse(state: .ok))
        snapshot.applied?.takenDevices = ["ext1"]
        let health = Health.judge(snapshot)
        #expect(health == HealthResponse(state: .warning, message: reason) && Health.httpStatus(health) == 200, "\(health)")
    }

    @Test("not attached yet: Failure, 503")
    func notAttached() throws {
        let health = Health.judge(try Self.snapshot(ready: false))
        #expect(health.state == .failure && health.message == "the datapath is not attached yet")
        #expect(Health.httpStatus(health) == 503)
    }

    @Test("no device in force: Failure naming the skipped devices and why")
    func noDevice() throws {
        let health = Health.judge(try Self.snapshot(devices: [], skipped: ["ext0": "no such device"]))
        #expect(health.state == .failure && Health.httpStatus(health) == 503)
        #expect(health.message == "no masquerading device in force, nothing is masqueraded (ext0: no such device)")
    }

    @Test("systemd's status line says what healthz says when it is not Ok")
    func statusLine() throws {
        let status = DaemonStatus()
        let snapshot = try Self.snapshot(devices: [], skipped: ["ext0": "no such device"])
        status.update { $0 = snapshot }
        let notifier = SystemdNotifier(status: status, serving: ServingState(), logger: .init(label: "apitests"))
        #expect(notifier.statusLine() == "Masquerading on []; Failure: no masquerading device in force, nothing is masqueraded (ext0: no such device)")
        let healthy = try Self.snapshot()
        status.update { $0 = healthy }
        #expect(notifier.statusLine() == "Masquerading on [eth0]")
    }

    @Test("a failing reconcile is a Warning, and a Failure once it has failed for the grace period")
    func failingReconcile() throws {
        var snapshot = try Self.snapshot()
        let now = Date()
        snapshot.lastApplyError = "attach eth0: EBUSY"
        snapshot.consecutiveFailures = 1
        snapshot.failingSince = now.addingTimeInterval(-5)
        let warning = Health.judge(snapshot, now: now, grace: 30)
        #expect(warning.state == .warning && Health.httpStatus(warning) == 200)
        #expect(warning.message?.contains("(1 attempt)") == true && warning.message?.hasSuffix("attach eth0: EBUSY") == true)
        snapshot.consecutiveFailures = 4
        snapshot.failingSince = now.addingTimeInterval(-31)
        let failure = Health.judge(snapshot, now: now, grace: 30)
        #expect(failure.state == .failure && Health.httpStatus(failure) == 503)
        #expect(failure.message?.hasPrefix("reconciles have been failing for 31 s (4 attempts)") == true, "\(failure)")
    }

    /// A snapshot whose ip-masq-agent file was rejected, the agent on or off.
    static func rejectedFile(agent: Bool, origin: DaemonStatus.ListOrigin) throws -> DaemonStatus.Snapshot {
        var snapshot = try snapshot()
        snapshot.config = try DaemonConfig(file: [:], flags: [.podCIDRs: .scalar("10.244.0.0/16"),
                                                              .enableIPMasqAgent: .scalar(agent ? "true" : "false")])
        snapshot.ipMasqAgent.lastError = "/etc/config/ip-masq-agent:1: fd00::/8 is an IPv6 CIDR, but enable-ipv6-masquerade is false"
        snapshot.ipMasqAgent.origin = origin
        snapshot.ipMasqAgent.cidrs = origin == .defaults ? IPMasqAgentConfig.defaults.effectiveList.cidrs : [try IPPrefix("11.0.0.0/8")]
        snapshot.ipMasqAgent.generation = origin == .file ? 3 : 0
        return snapshot
    }

    @Test("a rejected ip-masq-agent file while the agent is on: Warning, 200, naming the error and the list in force")
    func ipMasqAgentRejected() throws {
        let error = "ip-masq-agent config rejected: /etc/config/ip-masq-agent:1: fd00::/8 is an IPv6 CIDR, but enable-ipv6-masquerade is false; "
        let expected: [(DaemonStatus.ListOrigin, String)] = [
            (.defaults, "the default non-masquerade list (\(IPMasqAgentConfig.defaults.effectiveList.cidrs.count) CIDRs) is in force until a valid file arrives"),
            (.pinned, "the list pinned before the restart (1 CIDR) stays in force until a valid file arrives"),
            (.file, "the last valid list (generation 3, 1 CIDR) stays in force until a valid file arrives"),
        ]
        for (origin, inForce) in expected {
            let health = Health.judge(try Self.rejectedFile(agent: true, origin: origin))
            #expect(health.state == .warning && Health.httpStatus(health) == 200)
            #expect(health.message == error + inForce, "\(health)")
        }
        // Off, the file is not used: nothing to warn of.
        #expect(Health.judge(try Self.rejectedFile(agent: false, origin: .defaults)) == HealthResponse(state: .ok))
    }

    @Test("a rejected ip-masq-agent file is said with the other warnings, and a Failure takes precedence")
    func ipMasqAgentRejectedWithOthers() throws {
        var snapshot = try Self.rejectedFile(agent: true, origin: .defaults)
        let now = Date()
        snapshot.lastApplyError = "attach eth0: EBUSY"
        snapshot.consecutiveFailures = 1
        snapshot.failingSince = now.addingTimeInterval(-5)
        let both = Health.judge(snapshot, now: now, grace: 30)
        #expect(both.state == .warning)
        #expect(both.message?.hasPrefix("the last reconcile failed (1 attempt)") == true, "\(both)")
        #expect(both.message?.contains("; ip-masq-agent config rejected: /etc/config/ip-masq-agent:1:") == true, "\(both)")
        snapshot.failingSince = now.addingTimeInterval(-31)
        let failure = Health.judge(snapshot, now: now, grace: 30)
        #expect(failure.state == .failure && failure.message?.contains("ip-masq-agent") == false, "\(failure)")
        snapshot.failingSince = nil
        snapshot.lastApplyError = nil
        snapshot.applied?.devices = []
        #expect(Health.judge(snapshot).state == .failure)
    }

    @Test("systemd's status line names a rejected ip-masq-agent file once, in the Warning or, with the agent off, on its own")
    func statusLineRejectedFile() throws {
        let status = DaemonStatus()
        let notifier = SystemdNotifier(status: status, serving: ServingState(), logger: .init(label: "apitests"))
        let on = try Self.rejectedFile(agent: true, origin: .defaults)
        status.update { $0 = on }
        let line = notifier.statusLine()
        #expect(line.hasPrefix("Masquerading on [eth0]; Warning: ip-masq-agent config rejected: /etc/config/ip-masq-agent:1:"), "\(line)")
        #expect(line.components(separatedBy: "fd00::/8").count == 2, "\(line)")
        let off = try Self.rejectedFile(agent: false, origin: .defaults)
        status.update { $0 = off }
        #expect(notifier.statusLine() == "Masquerading on [eth0]; ip-masq-agent config invalid: /etc/config/ip-masq-agent:1: fd00::/8 is an IPv6 CIDR, but enable-ipv6-masquerade is false")
    }
}

extension LiveAPITests {
/// healthz, the health in status and masq_up say the same, whatever the state.
@Suite("health through the API", .serialized)
struct HealthLiveTests {
    @Test("healthz, status.health and masq_up agree: ok, no device, a reconcile failing for long, a rejected ip-masq-agent file")
    func agree() async throws {
        try await LiveAPI.with { api in
            let healthy = api.status.snapshot
            let cases: [(String, (inout DaemonStatus.Snapshot) -> Void, HealthResponse.State, Int)] = [
                ("ok", { _ in }, .ok, 200),
                ("no device", { $0.applied?.devices = [] }, .failure, 503),
                ("failing briefly", { $0.lastApplyError = "boom"; $0.consecutiveFailures = 1; $0.failingSince = .now }, .warning, 200),
                ("failing for long", { $0.lastApplyError = "boom"; $0.consecutiveFailures = 9
                                       $0.failingSince = Date().addingTimeInterval(-600) }, .failure, 503),
                ("ip-masq-agent file rejected", { $0.config = api.config; $0.ipMasqAgent.lastError = "/etc/config/ip-masq-agent:1: bad" }, .warning, 200),
            ]
            for (name, change, state, code) in cases {
                api.status.update { $0 = healthy; change(&$0) }
                let healthz = try await api.get("/v1/healthz")
                #expect(healthz.status == code, "\(name): \(healthz.text)")
                let health = try api.decode(HealthResponse.self, healthz)
                #expect(health.state == state, "\(name)")
                let status = try api.decode(StatusResponse.self, try await api.get("/v1/status"))
                #expect(status.health == health, "\(name)")
                let metrics = try await api.get("/metrics", accept: "text/plain").text
                #expect(metrics.contains("\nmasq_up \(code == 200 ? 1 : 0)\n"), "\(name)")
            }
        }
    }
}

@Suite("start", .serialized)
struct StartTests {
    @Test("a request that arrives before the datapath is attached is answered once it is, not with a 503")
    func heldUntilReady() async throws {
        try await LiveAPI.with(attached: false) { api in
            let started = ContinuousClock.now
            async let answer = TestHTTP.request(socketPath: api.socketPath, method: .GET, uri: "/v1/healthz", timeout: .seconds(30))
            try await Task.sleep(for: .seconds(1))
            api.status.update { $0.ready = true }
            let health = try await answer
            #expect(health.status == 200 && health.text.contains(#""state":"Ok""#), "\(health.status) \(health.text)")
            #expect(ContinuousClock.now - started >= .seconds(1))
        }
    }
}

@Suite("health of a real masqd", .serialized)
struct HealthProcessTests {
    @Test("masqd with its device missing is unhealthy and says why; once the device appears it is Ok")
    func deviceAppears() async throws {
        let masqd = try builtBinary("masqd")
        try await DaemonSandbox.with { sandbox in
            let process = try sandbox.start([masqd, "run"] + sandbox.masqdFlags())
            var first: HTTPResult?
            let deadline = ContinuousClock.now + .seconds(60)
            while first == nil, ContinuousClock.now < deadline, process.isRunning {
                first = try? await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/healthz")
                if first == nil { try await Task.sleep(for: .milliseconds(50)) }
            }
            let missing = try #require(first, "masqd did not answer: \(sandbox.log)")
            #expect(missing.status == 503, "\(missing.text)")
            #expect(missing.text.contains(#""state":"Failure""#) && missing.text.contains("no masquerading device in force"), "\(missing.text)")
            #expect(missing.text.contains("ext0"), "\(missing.text)")
            let metrics = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/metrics")
            #expect(metrics.text.contains("\nmasq_up 0\n") && metrics.text.contains("\nmasq_devices 0\n"))

            try await sandbox.addDevice()
            try await sandbox.waitHealthy()
            let ok = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/healthz")
            #expect(ok.text.contains(#""state":"Ok""#), "\(ok.text)")
            let after = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/metrics")
            #expect(after.text.contains("\nmasq_up 1\n") && after.text.contains("\nmasq_devices 1\n"))
        }
    }
}
}
