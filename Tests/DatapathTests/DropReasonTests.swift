// DropReason (Swift) must mirror bpf/lib/drop_reasons.h (C) exactly.

@testable import Datapath
import Foundation
import Testing

@Suite("Drop reasons")
struct DropReasonTests {
    /// `DROP_<NAME> <n>` lines of the header, as (n, "name" lowercased).
    static func headerReasons() throws -> [(UInt32, String)] {
        let header = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appending(path: "bpf/lib/drop_reasons.h")
        let text = try String(contentsOf: header, encoding: .utf8)
        return text.split(separator: "\n").compactMap { line in
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard words.count >= 3, words[0] == "#define", words[1].hasPrefix("DROP_"),
                  let value = UInt32(words[2]) else { return nil }
            return (value, words[1].dropFirst("DROP_".count).lowercased())
        }
    }

    @Test("DropReason has exactly the reasons of drop_reasons.h, with the same numbers and names")
    func mirrorsHeader() throws {
        let header = try Self.headerReasons()
        #expect(!header.isEmpty)
        let fromHeader = Dictionary(uniqueKeysWithValues: header.map { ($0.0, $0.1) })
        let fromSwift = Dictionary(uniqueKeysWithValues: DropReason.allCases.map { ($0.rawValue, $0.label) })
        #expect(fromSwift == fromHeader)
    }

    @Test("drop reasons stay clear of TC action codes and inside masq_drops")
    func reasonsInRange() throws {
        for (value, _) in try Self.headerReasons() {
            #expect((130..<256).contains(value))
        }
    }

    @Test("every drop reason has a label and a one-sentence summary")
    func labelsAndSummaries() {
        for reason in DropReason.allCases {
            #expect(reason.label.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "_" })
            #expect(reason.summary.hasSuffix("."))
        }
        #expect(Set(DropReason.allCases.map(\.label)).count == DropReason.allCases.count)
    }
}
