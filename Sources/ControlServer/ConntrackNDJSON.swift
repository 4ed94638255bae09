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
        out.writeStaticString(#"{"ageSeconds":"#)
        Self.write(e.ageSeconds, to: &out)
        if let device = e.device {
            out.writeStaticString(#","device":"#)
            writeString(device, to: &out)
        }
        out.writeStaticString(#","expiresInSeconds":"#)
        Self.write(e.expiresInSeconds, to: &out)
        out.writeStaticString(#","family":"#)
        writeString(e.family.rawValue, to: &out)
        out.writeStaticString(#","ifindex":"#)
        Self.write(UInt64(e.ifindex), to: &out)
        out.writeStaticString(#","kind":"#)
        writeString(e.kind.rawValue, to: &out)
        out.writeStaticString(#","original":"#)
        Self.write(e.original, to: &out)
        out.writeStaticString(#","originalCounters":"#)
        Self.write(e.originalCounters, to: &out)
        out.writeStaticString(#","protocol":"#)
        writeString(e.proto.rawValue, to: &out)
        if let reply = e.replyCounters {
            out.writeStaticString(#","replyCounters":"#)
            Self.write(reply, to: &out)
        }
        out.writeStaticString(#","state":"#)
        writeString(e.state.rawValue, to: &out)
        out.writeStaticString(#","translated":"#)
        Self.write(e.translated, to: &out)
        out.writeStaticString("}\n")
    }

    private static func write(_ t: FlowTuple, to out: inout ByteBuffer) {
        out.writeStaticString(#"{"dport":"#)
        write(UInt64(t.dport), to: &out)
        out.writeStaticString(#","dst":"#)
        write(t.dst, to: &out)
        out.writeStaticString(#","sport":"#)
        write(UInt64(t.sport), to: &out)
        out.writeStaticString(#","src":"#)
        write(t.src, to: &out)
        out.writeStaticString("}")
    }

    private static func write(_ c: FlowCounters, to out: inout ByteBuffer) {
        out.writeStaticString(#"{"bytes":"#)
        write(c.bytes, to: &out)
        out.writeStaticString(#","packets":"#)
        write(c.packets, to: &out)
        out.writeStaticString("}")
    }

    /// An address as a JSON string (IPv4 without building its description).
    private static func write(_ address: IPAddress, to out: inout ByteBuffer) {
        switch address {
        case .v4(let a):
            out.writeInteger(UInt8(ascii: "\""))
            write(UInt64(a.bytes.0), to: &out)
            out.writeInteger(UInt8(ascii: "."))
            write(UInt64(a.bytes.1), to: &out)
            out.writeInteger(UInt8(ascii: "."))
            write(UInt64(a.bytes.2), to: &out)
            out.writeInteger(UInt8(ascii: "."))
            write(UInt64(a.bytes.3), to: &out)
            out.writeInteger(UInt8(ascii: "\""))
        case .v6(let a):
            // inet_ntop's text: hex digits and colons, nothing to escape.
            out.writeInteger(UInt8(ascii: "\""))
            out.writeString(a.description)
            out.writeInteger(UInt8(ascii: "\""))
        }
    }

    /// A string as the encoder writes it (escapes and all), encoded by it once per distinct value.
    private mutating func writeString(_ s: String, to out: inout ByteBuffer) {
        if let bytes = strings[s] {
            out.writeBytes(bytes)
            return
        }
        // A top-level string fragment: the JSON string itself.
        let bytes = (try? APIJSON.encoder().encode(s)).map(Array.init) ?? Array("\"\"".utf8)
        strings[s] = bytes
        out.writeBytes(bytes)
    }

    /// A whole number in decimal.
    private static func write(_ value: UInt64, to out: inout ByteBuffer) {
        guard value >= 10 else {
            out.writeInteger(UInt8(ascii: "0") + UInt8(value))
            return
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0) // 24 bytes: UInt64.max has 20 digits
        withUnsafeMutableBytes(of: &digits) { buffer in
            var v = value, i = buffer.count
            while v > 0 {
                i -= 1
                buffer[i] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
            }
            out.writeBytes(UnsafeRawBufferPointer(rebasing: buffer[i...]))
        }
    }

    /// A finite Double as Foundation's JSON encoder writes it: Swift's shortest round-trip
    /// `description`, without the ".0" of a whole number.
    private static func write(_ value: Double, to out: inout ByteBuffer) {
        let text = value.description
        if text.hasSuffix(".0") {
            out.writeString(String(text.dropLast(2)))
        } else {
            out.writeString(text)
        }
    }
}
