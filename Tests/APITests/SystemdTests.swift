@preconcurrency import Glibc
import API
import Foundation
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

            // systemd-socket-activate execs masqd on the first connection: this healthz starts it
            // and is answered once masqd serves on the passed socket.
            try await sandbox.waitHealthy()
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

    @Test("the shipped units: the socket masqd adopts by name, Type=notify with a watchdog")
    func units() throws {
        let dir = URL(fileURLWithPath: Self.readme).deletingLastPathComponent().appendingPathComponent("contrib/systemd")
        let socketUnit = try String(contentsOf: dir.appendingPathComponent("masqd.socket"), encoding: .utf8)
        let serviceUnit = try String(contentsOf: dir.appendingPathComponent("masqd.service"), encoding: .utf8)
        let lines = { (text: String) in Set(text.split(separator: "\n").map(String.init)) }
        #expect(lines(socketUnit).isSuperset(of: ["ListenStream=/run/masq/masqd.sock", "FileDescriptorName=masqd", "SocketMode=0660"]))
        #expect(lines(serviceUnit).isSuperset(of: ["Type=notify", "Requires=masqd.socket"]))
        #expect(serviceUnit.contains("\nWatchdogSec="))
        #expect(serviceUnit.contains("\nExecStart=/usr/local/bin/masqd run"))
    }
}
}
