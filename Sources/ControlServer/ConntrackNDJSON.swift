import API
import Foundation
import NIOCore

/// A `ConntrackEntry` as one NDJSON line, written straight into a `ByteBuffer`: byte for byte
/// what `APIJSON.encoder()` makes of it (keys sorted, nil values left out, `/` unescaped,
/// numbers as Foundation spells them), at a small fraction of its cost. A dump of a million
/// flows is a million of these; through Codable they took most of the stream's time.
/// StreamingTests holds the two encodings equal.
struct ConntrackNDJSON {
    /// Strings the entries repeat (device names, enum values), encoded once.
    private var strings: [String: [UInt8]] = [:]

    mutating func write(_ e: ConntrackEntry, to out: inout ByteBuffer) {
        let device = e.device.map { encoded($0) }
        let family = encoded(e.family.rawValue), kind = encoded(e.kind.rawValue)
        let proto = encoded(e.proto.rawValue), state = encoded(e.state.rawValue)
        // The fixed part of a line is under 600 bytes (IPv6 addresses, 20-digit counters).
        let bound = 1024 + (device?.count ?? 0) + family.count + kind.count + proto.count + state.count
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { raw in
            var w = LineWriter(raw.baseAddress!)
            w.put(#"{"ageSeconds":"#)
            w.put(e.ageSeconds)
            if let device {
                w.put(#","device":"#)
                w.put(device)
            }
            w.put(#","expiresInSeconds":"#)
            w.put(e.expiresInSeconds)
            w.put(#","family":"#)
            w.put(family)
            w.put(#","ifindex":"#)
            w.put(UInt64(e.ifindex))
            w.put(#","kind":"#)
            w.put(kind)
            w.put(#","original":"#)
            w.put(e.original)
            w.put(#","originalCounters":"#)
            w.put(e.originalCounters)
            w.put(#","protocol":"#)
            w.put(proto)
            if let reply = e.replyCounters {
                w.put(#","replyCounters":"#)
                w.put(reply)
            }
            w.put(#","state":"#)
            w.put(state)
            w.put(#","translated":"#)
            w.put(e.translated)
            w.put("}\n")
            return w.count
        }
    }

    /// A string as the encoder writes it (escapes and all), encoded by it once per distinct value.
    private mutating func encoded(_ s: String) -> [UInt8] {
        if let bytes = strings[s] { return bytes }
        // A top-level string fragment: the JSON string itself.
        let bytes = (try? APIJSON.encoder().encode(s)).map(Array.init) ?? Array("\"\"".utf8)
        strings[s] = bytes
        return bytes
    }
}

/// Writes one line into memory reserved for it, with plain stores: no per-byte bounds or
/// capacity checks (the caller reserved enough), which keeps even a debug build's stream fast.
private struct LineWriter {
    let base: UnsafeMutableRawPointer
    var count = 0

    init(_ base: UnsafeMutableRawPointer) {
        self.base = base
    }

    mutating func put(_ text: StaticString) {
        (base + count).copyMemory(from: text.utf8Start, byteCount: text.utf8CodeUnitCount)
        count += text.utf8CodeUnitCount
    }

    mutating func put(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { (base + count).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        count += bytes.count
    }

    mutating func put(byte: UInt8) {
        base.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    /// A whole number in decimal.
    mutating func put(_ value: UInt64) {
        var digits = 1
        var rest = value / 10
        while rest > 0 {
            digits += 1
            rest /= 10
        }
        var v = value
        for i in stride(from: count + digits - 1, through: count, by: -1) {
            base.storeBytes(of: UInt8(truncatingIfNeeded: 48 + v % 10), toByteOffset: i, as: UInt8.self)
            v /= 10
        }
        count += digits
    }

    /// A finite Double as Foundation's JSON encoder writes it: Swift's shortest round-trip
    /// `description`, without the ".0" of a whole number.
    mutating func put(_ value: Double) {
        var text = value.description
        text.withUTF8 { utf8 in
            let n = utf8.count >= 2 && utf8[utf8.count - 2] == UInt8(ascii: ".") && utf8[utf8.count - 1] == UInt8(ascii: "0")
                ? utf8.count - 2 : utf8.count
            (base + count).copyMemory(from: utf8.baseAddress!, byteCount: n)
            count += n
        }
    }

    mutating func put(_ t: FlowTuple) {
        put(#"{"dport":"#)
        put(UInt64(t.dport))
        put(#","dst":"#)
        put(t.dst)
        put(#","sport":"#)
        put(UInt64(t.sport))
        put(#","src":"#)
        put(t.src)
        put(byte: UInt8(ascii: "}"))
    }

    mutating func put(_ c: FlowCounters) {
        put(#"{"bytes":"#)
        put(c.bytes)
        put(#","packets":"#)
        put(c.packets)
        put(byte: UInt8(ascii: "}"))
    }

    /// An address as a JSON string (IPv4 without building its description).
    mutating func put(_ address: IPAddress) {
        put(byte: UInt8(ascii: "\""))
        switch address {
        case .v4(let a):
            put(UInt64(a.bytes.0))
            put(byte: UInt8(ascii: "."))
            put(UInt64(a.bytes.1))
            put(byte: UInt8(ascii: "."))
            put(UInt64(a.bytes.2))
            put(byte: UInt8(ascii: "."))
            put(UInt64(a.bytes.3))
        case .v6(let a):
            put(a)
        }
        put(byte: UInt8(ascii: "\""))
    }

    /// An IPv6 address as inet_ntop writes it (`description`), without building its text: RFC
    /// 5952's lowercase hex groups without leading zeros, the longest run of two or more zero
    /// groups (the first of equal runs) as "::". An address whose first 80 bits are zero may
    /// take inet_ntop's dotted forms (::ffff:a.b.c.d, ::a.b.c.d) and goes through `description`.
    /// A million-flow IPv6 dump spent most of its time building those texts.
    mutating func put(_ a: IPv6Address) {
        let b = a.bytes
        func group(_ g: Int) -> UInt16 { UInt16(b[2 * g]) << 8 | UInt16(b[2 * g + 1]) }
        var zeros = (start: -1, count: 0)
        var run = -1
        for g in 0..<8 {
            guard group(g) == 0 else {
                run = -1
                continue
            }
            if run < 0 { run = g }
            if g - run + 1 > zeros.count { zeros = (run, g - run + 1) }
        }
        if zeros.count < 2 { zeros = (-1, 0) }
        if zeros.start == 0 && zeros.count >= 5 {
            put(Array(a.description.utf8))
            return
        }
        for g in 0..<8 {
            if g >= zeros.start && g < zeros.start + zeros.count {
                if g == zeros.start { put(byte: UInt8(ascii: ":")) }
                continue
            }
            if g > 0 { put(byte: UInt8(ascii: ":")) }
            let word = group(g)
            for shift in stride(from: 12, through: 0, by: -4) where word >> UInt16(shift) != 0 || shift == 0 {
                put(byte: Self.hexDigits[Int(word >> UInt16(shift) & 0xf)])
            }
        }
        if zeros.count > 0 && zeros.start + zeros.count == 8 { put(byte: UInt8(ascii: ":")) }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)
}
