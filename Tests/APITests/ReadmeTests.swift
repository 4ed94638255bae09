import API
import Foundation
import Testing

extension LiveAPITests {
/// Every `curl --unix-socket` line of the README's API examples, run against a live server.
@Suite("README examples", .serialized)
struct ReadmeTests {
    static func curlLines() throws -> [String] {
        let text = try String(contentsOfFile: SystemdTests.readme, encoding: .utf8)
        guard let start = text.range(of: "<!-- api-examples:begin"), let end = text.range(of: "<!-- api-examples:end -->") else {
            throw TestFailure("README has no api-examples block")
        }
        return text[start.upperBound..<end.lowerBound].split(separator: "\n").map(String.init).filter { $0.hasPrefix("curl ") }
    }

    /// Splits a shell line on spaces, honouring single quotes (all the README uses).
    static func words(_ line: String) -> [String] {
        var words: [String] = []
        var current = ""
        var quoted = false
        var started = false
        for c in line {
            if c == "'" { quoted.toggle(); started = true; continue }
            if c == " " && !quoted {
                if started { words.append(current) }
                current = ""
                started = false
                continue
            }
            current.append(c)
            started = true
        }
        if started { words.append(current) }
        return words
    }

    @Test("each curl example answers 200 with JSON, NDJSON or Prometheus text")
    func curlExamples() async throws {
        let lines = try Self.curlLines()
        #expect(lines.count >= 3)
        #expect(lines.contains { $0.contains("/v1/status") } && lines.contains { $0.contains("/v1/ipmasq") }
                && lines.contains { $0.contains("/v1/conntrack?") })
        try await LiveAPI.with { api in
            try await api.fillFlows(20)
            for line in lines {
                var argv = Self.words(line.replacingOccurrences(of: "/run/masq/masqd.sock", with: api.socketPath))
                argv.insert(contentsOf: ["-sS", "-w", "\n%{http_code}"], at: 1)
                let result = try await run(["/usr/bin/env"] + argv)
                #expect(result.status == 0, "\(line): \(result.stderr)")
                var output = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
                let code = output.popLast()
                #expect(code == "200", "\(line): \(result.stdout)")
                let body = output.joined(separator: "\n")
                if line.contains("/metrics") {
                    #expect(body.contains("# TYPE masq_up gauge"))
                } else {
                    for document in body.split(separator: "\n") where !document.isEmpty {
                        #expect((try? JSONSerialization.jsonObject(with: Data(document.utf8))) != nil, "\(line): \(document)")
                    }
                }
            }
        }
    }
}
}
