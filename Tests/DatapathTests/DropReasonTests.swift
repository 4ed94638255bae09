// DropReason reads MASQ_DROP_REASONS (bpf/lib/drop_reasons.h) through CMasq.

import CMasq
@testable import Datapath
import Testing

@Suite("Drop reasons")
struct DropReasonTests {
    @Test("the reasons are those of drop_reasons.h, with the DROP_* numbers and names")
    func fromHeader() throws {
        let reasons = DropReason.all
        #expect(reasons.count == Int(masq_drop_reason_count()) && reasons.count >= 11)
        #expect(DropReason(DROP_NAT_TABLE_FULL).code == 138 && DropReason(DROP_NAT_TABLE_FULL).label == "nat_table_full")
        #expect(DropReason(DROP_CSUM_L4).label == "csum_l4")
        #expect(!reasons.contains { $0.code == 134 }, "134 (csum_l3) is retired")
        #expect(Set(reasons.map(\.code)).count == reasons.count)
    }

    @Test("drop reasons stay clear of TC action codes and inside masq_drops")
    func reasonsInRange() {
        for reason in DropReason.all {
            #expect((130..<UInt32(MASQ_DROPS_MAX_ENTRIES)).contains(reason.code), "\(reason.label)")
        }
    }

    @Test("every drop reason has a label and a one-sentence summary")
    func labelsAndSummaries() {
        for reason in DropReason.all {
            #expect(reason.label.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "_" })
            #expect(reason.summary.hasSuffix("."))
        }
        #expect(Set(DropReason.all.map(\.label)).count == DropReason.all.count)
    }
}

@Suite("libbpf log")
struct LibbpfLogTests {
    @Test("the kernel's answer to a clsact qdisc that exists already is debug; other messages keep libbpf's level")
    func levels() {
        #expect(libbpfLogLevel(0, "libbpf: Kernel error message: Exclusivity flag on, cannot modify\n") == .debug)
        #expect(libbpfLogLevel(0, "libbpf: Kernel error message: Filter already exists\n") == .warning)
        #expect(libbpfLogLevel(1, "libbpf: loaded\n") == .info)
        #expect(libbpfLogLevel(2, "libbpf: map 'x': created\n") == .debug)
    }
}
