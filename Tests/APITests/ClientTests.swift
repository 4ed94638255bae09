import API
import Foundation
import Testing

@testable import Daemon

extension LiveAPITests {
/// masq-client, the built binary, against a live server.
@Suite("masq-client", .serialized)
struct ClientTests {
    @Test("an unreachable daemon is one line naming the socket and exit status 1")
    func unreachable() async throws {
        let client = try builtBinary("masq-client")
        let result = try await run([client, "status"], environment: ["MASQ_SOCKET": "/nonexistent/masqd.sock"])
        #expect(result.status == 1)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1)
        #expect(lines.first?.hasPrefix("masq-client: cannot reach masqd at /nonexistent/masqd.sock") == true)
    }

    @Test("status prints the Cilium-style masquerading line; -o json prints the API's JSON")
    func status() async throws {
        try await LiveAPI.with { api in
            let client = try builtBinary("masq-client")
            let text = try await run([client, "status", "--socket", api.socketPath])
            #expect(text.status == 0, "\(text.stderr)")
            #expect(text.stdout.contains("Masquerading:   BPF (ip-masq-agent)   [lo]   10.244.1.0/24   [IPv4: Enabled, IPv6: Disabled]\n"), "\(text.stdout)")
            let json = try await run([client, "status", "-o", "json"], environment: ["MASQ_SOCKET": api.socketPath])
            let decoded = try APIJSON.decoder().decode(StatusResponse.self, from: Data(json.stdout.utf8))
            #expect(decoded.ready)
        }
    }

    @Test("ipmasq list, conntrack list and flush, explain and config print aligned text")
    func commands() async throws {
        try await LiveAPI.with { api in
            try await api.fillFlows(5)
            let client = try builtBinary("masq-client")
            let env = ["MASQ_SOCKET": api.socketPath]
            let list = try await run([client, "ipmasq", "list"], environment: env)
            #expect(list.stdout == "IP PREFIX/ADDRESS\n100.0.9.0/24\n192.168.0.0/16\n")

            let flows = try await run([client, "conntrack", "list", "--proto", "tcp", "--dst", "100.0.0.0/24"], environment: env)
            let rows = flows.stdout.split(separator: "\n")
            #expect(rows.count == 6, "\(flows.stdout)")
            #expect(rows.first?.hasPrefix("PROTO   KIND        ORIGINAL") == true)
            // Aligned: TRANSLATED starts in the same column on every row.
            let column = rows.first.flatMap { $0.range(of: "TRANSLATED") }.map { rows[0].distance(from: rows[0].startIndex, to: $0.lowerBound) }
            for row in rows.dropFirst() {
                let start = row.index(row.startIndex, offsetBy: column ?? 0)
                #expect(row[start...].hasPrefix("100.0.0.1:"), "\(row)")
            }
            let json = try await run([client, "conntrack", "list", "-o", "json", "--limit", "2"], environment: env)
            #expect(json.stdout.split(separator: "\n").count == 2)

            let bad = try await run([client, "conntrack", "list", "--src", "10.0.0.1/8"], environment: env)
            #expect(bad.status != 0 && bad.stderr.contains("--src: '10.0.0.1/8' has host bits set"))

            let flush = try await run([client, "conntrack", "flush", "--sport", "10000"], environment: env)
            #expect(flush.stdout == "Deleted 5 flows.\n", "\(flush.stdout) \(flush.stderr)")

            let explain = try await run([client, "explain", "--src", "10.244.1.2", "--dst", "192.0.2.10", "--device", "lo"], environment: env)
            #expect(explain.stdout.contains("Rule:           cluster-node"), "\(explain.stdout)")

            let config = try await run([client, "config"], environment: env)
            #expect(config.stdout.contains("pod-cidrs:"))
            let completion = try await run([client, "--generate-completion-script", "bash"])
            #expect(completion.stdout.contains("conntrack"))
        }
    }
}
}
