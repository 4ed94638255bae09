@preconcurrency import Glibc
import API
@testable import ControlServer
import Foundation

import Testing

extension LiveAPITests {
/// Clients that misbehave cost the daemon little, and others keep being served.
@Suite("abuse", .serialized)
struct AbuseTests {
    /// healthz round trip on a fresh connection, in milliseconds.
    static func healthzLatency(_ api: LiveAPI) async throws -> Double {
        let start = ContinuousClock.now
        let result = try await api.get("/v1/healthz")
        #expect(result.status == 200)
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
    }

    @Test("a malformed request gets a 400 JSON message and the connection closes")
    func malformed() async throws {
        try await LiveAPI.with { api in
            let raw = try RawSocket(path: api.socketPath)
            raw.send("GARBAGE\r\n\r\n")
            let answer = raw.readAll()
            #expect(answer.hasPrefix("HTTP/1.1 400"), "\(answer)")
            #expect(answer.contains(#"{"message":"malformed HTTP request"#))
        }
    }

    @Test("an oversize body gets 413 before it is read, oversize headers get 431")
    func oversize() async throws {
        try await LiveAPI.with { api in
            let body = try RawSocket(path: api.socketPath)
            body.send("DELETE /v1/conntrack HTTP/1.1\r\nHost: m\r\nContent-Length: 10000000\r\n\r\n")
            body.send([UInt8](repeating: 0x41, count: 70_000))
            let answer = body.readAll()
            #expect(answer.hasPrefix("HTTP/1.1 413"), "\(answer)")
            #expect(answer.contains("request body larger than"))

            let headers = try RawSocket(path: api.socketPath)
            headers.send("GET /v1/status HTTP/1.1\r\nHost: m\r\nX-Big: \(String(repeating: "a", count: 20_000))\r\n\r\n")
            let headerAnswer = headers.readAll()
            #expect(headerAnswer.hasPrefix("HTTP/1.1 431"), "\(headerAnswer)")
            #expect(try await Self.healthzLatency(api) < 100)
        }
    }

    @Test("200 idle connections do not slow healthz, and idle connections are closed after the timeout")
    func idleConnections() async throws {
        var limits = APIServer.Limits()
        limits.idleTimeout = .seconds(2)
        try await LiveAPI.with(limits: limits) { api in
            var idle: [RawSocket] = []
            for _ in 0..<200 { idle.append(try RawSocket(path: api.socketPath)) }
            // Half of them start a request and never finish it.
            for socket in idle.prefix(100) { socket.send("GET /v1/status HTTP/1.1\r\nHost: m\r\n") }
            try await Task.sleep(for: .milliseconds(200))
            var worst = 0.0
            for _ in 0..<5 { worst = max(worst, try await Self.healthzLatency(api)) }
            #expect(worst < 100, "healthz took \(worst) ms with 200 idle connections")
            // After the idle timeout the server has closed them: a read sees EOF.
            try await Task.sleep(for: .seconds(3))
            #expect(idle[150].readAll().isEmpty)
            #expect(idle[0].readAll().isEmpty)
        }
    }

    @Test("a client that stops reading a large stream does not block others")
    func stuckReader() async throws {
        try await LiveAPI.with { api in
            try await api.fillFlows(50_000)
            let stuck = try RawSocket(path: api.socketPath)
            var small: Int32 = 4096
            setsockopt(stuck.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            stuck.send("GET /v1/conntrack HTTP/1.1\r\nHost: m\r\nAccept: application/x-ndjson\r\n\r\n")
            // Let the server fill the socket buffers and block on this client.
            try await Task.sleep(for: .milliseconds(500))
            var worst = 0.0
            for _ in 0..<5 { worst = max(worst, try await Self.healthzLatency(api)) }
            #expect(worst < 100, "healthz took \(worst) ms while a stream is stuck")
            let status = try await api.get("/v1/status")
            #expect(status.status == 200)
            _ = stuck
        }
    }
}
}
