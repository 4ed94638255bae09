import Datapath
import Foundation
import Testing

@Suite("NAT table summary")
struct NATSummaryTests {
    static func table(entries: Int, tcp: Int) -> NATTableSummary {
        var table = NATTableSummary(family: .ipv4, map: "masq_nat_v4")
        table.entries = entries
        table.flows[.init(proto: 6, kind: .masquerade)] = tcp
        return table
    }

    @Test("a delete that began after the count is taken off it, never below zero")
    func subtractAfterCount() {
        let counted = Date(timeIntervalSince1970: 1000)
        var summary = NATSummary(tables: [Self.table(entries: 20, tcp: 10)], asOf: counted)
        summary.subtract(Self.table(entries: 6, tcp: 3), deletionStart: counted.addingTimeInterval(1))
        #expect(summary.tables[0].entries == 14)
        #expect(summary.tables[0].flows[.init(proto: 6, kind: .masquerade)] == 7)
        summary.subtract(Self.table(entries: 30, tcp: 12), deletionStart: counted.addingTimeInterval(2))
        #expect(summary.tables[0].entries == 0)
        #expect(summary.tables[0].flows.isEmpty)
    }

    @Test("a count recorded after the delete began (a GC walk beside it) is left as it is")
    func subtractBeforeCount() {
        let counted = Date(timeIntervalSince1970: 1000)
        var summary = NATSummary(tables: [Self.table(entries: 20, tcp: 10)], asOf: counted)
        summary.subtract(Self.table(entries: 6, tcp: 3), deletionStart: counted.addingTimeInterval(-0.5))
        #expect(summary == NATSummary(tables: [Self.table(entries: 20, tcp: 10)], asOf: counted))
    }
}
