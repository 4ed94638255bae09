@preconcurrency import Glibc
import API
import Foundation
import TestSupport
import Testing

extension LiveAPITests {
/// Socket activation and Type=notify, the way the README's recipe runs them without systemd.
@Suite("systemd", .serialized)
struct SystemdTests {
    static let readme = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("README.md").path

    /// The README's `systemd-socket-activate ...` line.
    static func recipeLine() throws -> String {
        let text = try String(contentsOfFile: readme, encoding: .utf8)
        guard let start = text.range(of: "<!-- systemd-recipe:begin"), let end = text.range(of: "<!-- systemd-recipe:end -->"),
              let line = text[start.upperBound..<end.lowerBound].split(separator: "\n")
                .first(where: { $0.hasPrefix("systemd-socket-activate ") }) else {
            throw TestFailure("README has no systemd-socket-activate line in its systemd recipe")
        }
        return String(line)
    }

    @Test("systemd-socket-activate as the README runs it: masqd serves healthz on the passed socket and sends READY=1")
    func socketActivation() async throws {
        let masqd = try builtBinary("masqd")
        try await DaemonSandbox.with { sandbox in
            // A NOTIFY_SOCKET of the test's own.
            let notifyPath = sandbox.dir + "/notify.sock"
            let notify = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            defer { close(notify) }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(notifyPath.utf8) + [0]) }
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(notify, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            #expect(bound == 0)
            var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(notify, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

            // The README's line, with this sandbox's socket and masqd's flags for the config file.
            var line = try Self.recipeLine()
            line = line.replacingOccurrences(of: "/run/masq/masqd.sock", with: sandbox.socketPath)
            line = line.replacingOccurrences(of: "/usr/local/bin/masqd run --config /etc/masq/masqd.yaml",
                                             with: "\(masqd) run " + sandbox.masqdFlags(["--socket-path", "/nonexistent/ignored.sock"]).joined(separator: " "))
            let argv = line.split(separator: " ").map(String.init)
            let process = try sandbox.start(["/usr/bin/env"] + argv, environment: ["NOTIFY_SOCKET": notifyPath])

            // systemd-socket-activate execs masqd on the first connection: this one request
            // starts it and waits in the listen queue until masqd is ready, then gets its answer
            // (never a 503 for racing the start).
            try await sandbox.addDevice()
            let listening = ContinuousClock.now + .seconds(10)
            while !FileManager.default.fileExists(atPath: sandbox.socketPath) && ContinuousClock.now < listening {
                try await Task.sleep(for: .milliseconds(20))
            }
            let first = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/healthz",
                                                   timeout: .seconds(60))
            #expect(first.status == 200 && first.text.contains(#""state":"Ok""#), "\(first.status) \(first.text); \(sandbox.log)")
            var messages: [String] = []
            let deadline = ContinuousClock.now + .seconds(30)
            while !messages.contains(where: { $0.split(separator: "\n").contains("READY=1") }) {
                guard ContinuousClock.now < deadline, process.isRunning else {
                    Issue.record("no READY=1 (got \(messages)); masqd log: \(sandbox.log)")
                    return
                }
                var buffer = [UInt8](repeating: 0, count: 4096)
                let n = recv(notify, &buffer, buffer.count, 0)
                if n > 0 { messages.append(String(decoding: buffer[0..<n], as: UTF8.self)) }
            }
            #expect(messages.joined(separator: "\n").contains("STATUS="))
            // The passed socket serves; masqd did not bind its own socket-path.
            let health = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/healthz")
            #expect(health.status == 200 && health.text.contains(#""state":"Ok""#))
            #expect(!FileManager.default.fileExists(atPath: "/nonexistent/ignored.sock"))
            #expect(sandbox.log.contains("socket.activated=true"))
            // The config shows the socket in effect, the one systemd passed, not socket-path.
            let config = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/config")
            #expect(config.text.contains(#""socketPath":"\#(sandbox.socketPath)""#), "\(config.text)")

            // SIGHUP (ExecReload): RELOADING=1 with the time it began, then READY=1 once done.
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let hupAt = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
            kill(daemonPID(process), SIGHUP)
            var reload: [String] = []
            let reloadDeadline = ContinuousClock.now + .seconds(20)
            while !(reload.firstIndex(of: "RELOADING=1").map { reload[$0...].contains("READY=1") } ?? false) {
                guard ContinuousClock.now < reloadDeadline else {
                    Issue.record("no RELOADING=1 then READY=1 after SIGHUP (got \(reload)); masqd log: \(sandbox.log)")
                    break
                }
                var buffer = [UInt8](repeating: 0, count: 4096)
                let n = recv(notify, &buffer, buffer.count, 0)
                if n > 0 { reload += String(decoding: buffer[0..<n], as: UTF8.self).split(separator: "\n").map(String.init) }
            }
            let usec = reload.first { $0.hasPrefix("MONOTONIC_USEC=") }.flatMap { UInt64($0.dropFirst("MONOTONIC_USEC=".count)) }
            #expect(usec.map { $0 >= hupAt } == true, "\(reload)")

            kill(daemonPID(process), SIGTERM)
            var stopping = false
            let stopDeadline = ContinuousClock.now + .seconds(20)
            while !stopping && ContinuousClock.now < stopDeadline {
                var buffer = [UInt8](repeating: 0, count: 4096)
                let n = recv(notify, &buffer, buffer.count, 0)
                if n > 0 { stopping = String(decoding: buffer[0..<n], as: UTF8.self).contains("STOPPING=1") }
            }
            #expect(stopping, "no STOPPING=1 after SIGTERM")
        }
    }

    static var repo: URL { URL(fileURLWithPath: readme).deletingLastPathComponent() }

    /// The unit's CapabilityBoundingSet= line and the capabilities it names.
    static func capabilities(_ unit: String) throws -> (line: String, names: [String]) {
        guard let line = unit.split(separator: "\n").last(where: { $0.hasPrefix("CapabilityBoundingSet=") }) else {
            throw TestFailure("masqd.service has no CapabilityBoundingSet=")
        }
        return (String(line), line.dropFirst("CapabilityBoundingSet=".count).split(separator: " ").map(String.init))
    }

    /// The same as a /proc CapEff mask.
    static func capabilityMask(_ unit: String) throws -> UInt64 {
        let numbers = ["CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39]
        return try capabilities(unit).names.reduce(0) { mask, name in
            guard let bit = numbers[name] else { throw TestFailure("unexpected capability \(name)") }
            return mask | 1 << bit
        }
    }

    @Test("masqd under masqd.service's hardening (its capabilities, syscall filter, read-only system): attaches, serves, reloads on ExecReload's SIGHUP, stops")
    func hardenedUnit() async throws {
        let masqd = try builtBinary("masqd")
        let unitPath = Self.repo.appendingPathComponent("contrib/systemd/masqd.service").path
        let unit = try String(contentsOfFile: unitPath, encoding: .utf8)
        #expect(unit.split(separator: "\n").contains("ExecReload=/bin/kill -HUP $MAINPID"))
        let capabilities = try Self.capabilityMask(unit)
        try await DaemonSandbox.with { sandbox in
            // A device in force, so the programs are loaded, pinned and attached under the unit.
            for argv in [["link", "add", "ext0", "type", "veth", "peer", "name", "ext1"], ["addr", "add", "192.0.2.1/24", "dev", "ext0"],
                         ["link", "set", "ext0", "up"], ["link", "set", "ext1", "up"]] {
                guard try await run(["/usr/bin/env", "ip", "-n", sandbox.name] + argv).status == 0 else {
                    throw TestFailure("ip \(argv.joined(separator: " ")) failed")
                }
            }
            // systemd's part: the socket from masqd.socket, then the unit's settings (the bpffs
            // stands in for ReadWritePaths=/sys/fs/bpf), then ExecStart.
            let process = try sandbox.start(
                ["/usr/bin/systemd-socket-activate", "-l", sandbox.socketPath, "--fdname=masqd",
                 "/usr/bin/python3", Self.repo.appendingPathComponent("scripts/unit-sandbox.py").path, unitPath, "--rw", sandbox.bpffs, "--",
                 masqd, "run"] + sandbox.masqdFlags(["--socket-path", "/nonexistent/ignored.sock"]))
            try await sandbox.waitHealthy()
            let pid = daemonPID(process)
            let procStatus = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
            #expect(procStatus.contains("CapEff:\t" + String(format: "%016llx", capabilities)), "\(procStatus)")
            #expect(procStatus.contains("NoNewPrivs:\t1") && procStatus.contains("Seccomp:\t2"))

            func status() async throws -> StatusResponse {
                let result = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/status")
                return try APIJSON.decoder().decode(StatusResponse.self, from: result.body)
            }
            let before = try await status()
            #expect(before.ready && before.devices.map(\.name) == ["ext0"], "\(sandbox.log)")

            // ExecReload: masqd re-reads its config and counts the load.
            kill(pid, SIGHUP)
            let deadline = ContinuousClock.now + .seconds(30)
            while try await status().configReloads.daemon.ok == before.configReloads.daemon.ok {
                guard ContinuousClock.now < deadline else {
                    Issue.record("no config reload counted after SIGHUP: \(sandbox.log)")
                    break
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            let health = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/healthz")
            #expect(health.status == 200 && health.text.contains(#""state":"Ok""#), "\(health.text)")

            kill(pid, SIGTERM)
            #expect(await Command.waitForExit(process, timeout: .seconds(20)), "masqd did not stop within TimeoutStopSec")
            #expect(!sandbox.log.contains("Operation not permitted"), "\(sandbox.log)")
        }
    }

    @Test("the unit's capability set is the smallest: without any one of them masqd does not start")
    func capabilitiesAllNeeded() async throws {
        let masqd = try builtBinary("masqd")
        let unitPath = Self.repo.appendingPathComponent("contrib/systemd/masqd.service").path
        let unit = try String(contentsOfFile: unitPath, encoding: .utf8)
        let (line, capabilities) = try Self.capabilities(unit)
        try await DaemonSandbox.with { sandbox in
            for dropped in capabilities {
                let variant = sandbox.dir + "/without-\(dropped).service"
                let kept = capabilities.filter { $0 != dropped }.joined(separator: " ")
                try unit.replacingOccurrences(of: line, with: "CapabilityBoundingSet=" + kept)
                    .write(toFile: variant, atomically: true, encoding: .utf8)
                let result = try await run(
                    ["/usr/bin/nsenter", "--net=/run/netns/\(sandbox.name)", "/usr/bin/python3",
                     Self.repo.appendingPathComponent("scripts/unit-sandbox.py").path, variant, "--rw", sandbox.dir, "--",
                     masqd, "run"] + sandbox.masqdFlags(), timeout: .seconds(60))
                #expect(result.status != 0, "masqd ran without \(dropped)")
                #expect(result.stderr.contains("load BPF object"), "without \(dropped): \(result.stderr)")
            }
        }
    }

    @Test("the shipped units: the socket masqd adopts by name, Type=notify with a watchdog")
    func units() throws {
        let dir = URL(fileURLWithPath: Self.readme).deletingLastPathComponent().appendingPathComponent("contrib/systemd")
        let socketUnit = try String(contentsOf: dir.appendingPathComponent("masqd.socket"), encoding: .utf8)
        let serviceUnit = try String(contentsOf: dir.appendingPathComponent("masqd.service"), encoding: .utf8)
        let lines = { (text: String) in Set(text.split(separator: "\n").map(String.init)) }
        #expect(lines(socketUnit).isSuperset(of: ["ListenStream=/run/masq/masqd.sock", "FileDescriptorName=masqd", "SocketMode=0660"]))
        #expect(lines(serviceUnit).isSuperset(of: ["Type=notify", "Requires=masqd.socket", "RestartPreventExitStatus=2 64"]))
        // The socket outlives a restart of the service: requests queue instead of being refused.
        #expect(!lines(socketUnit).contains { $0.hasPrefix("PartOf=") })
        #expect(serviceUnit.contains("\nWatchdogSec="))
        #expect(serviceUnit.contains("\nExecStart=/usr/local/bin/masqd run"))
    }
}
}
