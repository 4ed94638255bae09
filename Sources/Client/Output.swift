import API
import ArgumentParser
import Foundation

/// Runs a command's body; a failure to talk to masqd becomes one line on stderr and exit 1.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ClientError {
        printError("masq-client: \(error.description)")
        throw ExitCode(1)
    }
}

func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

/// Writes raw API bytes (the `-o json` output) to stdout, ending with a newline.
func printRaw(_ data: Data) {
    var output = StreamOutput()
    output.raw(data)
    output.flush()
}

/// A stream's stdout lines, gathered while one chunk of the answer is read and written in one
/// go when it ends (`flush`): the lines reach a pipe as they arrive, at one write a chunk. A
/// write a line held `conntrack events` to a few thousand events a second.
struct StreamOutput {
    private var pending = Data()

    mutating func line(_ text: String) {
        pending.append(contentsOf: text.utf8)
        pending.append(UInt8(ascii: "\n"))
    }

    /// Raw API bytes (the `-o json` output), ending with a newline.
    mutating func raw(_ data: Data) {
        pending.append(data)
        if data.last != UInt8(ascii: "\n") { pending.append(UInt8(ascii: "\n")) }
    }

    /// An NDJSON line (one API document) as a document of a YAML stream: `---`, then its YAML.
    mutating func yamlDocument(_ line: Data) throws {
        pending.append(contentsOf: ("---\n" + (try YAMLDocument(json: line).text)).utf8)
    }

    mutating func flush() {
        guard !pending.isEmpty else { return }
        do {
            try FileHandle.standardOutput.write(contentsOf: pending)
        } catch {
            Self.readerGone()
        }
        pending.removeAll(keepingCapacity: true)
    }

    /// Ends the client if stdout is a pipe whose reader went away, without writing: a stream
    /// that prints nothing for a while (`conntrack events | head -1` with no new events) would
    /// otherwise notice only at its next line.
    func endIfReaderGone() {
        var out = pollfd(fd: STDOUT_FILENO, events: Int16(POLLOUT), revents: 0)
        if poll(&out, 1, 0) == 1, out.revents & Int16(POLLERR) != 0 { Self.readerGone() }
    }

    /// The reader went away (`| head`): end quietly, as a program SIGPIPE kills does (the
    /// client ignores SIGPIPE for its socket, so the write fails instead).
    private static func readerGone() -> Never {
        signal(SIGPIPE, SIG_DFL)
        raise(SIGPIPE)
        exit(141)
    }
}

/// Columns padded to fixed widths; the last column is not padded.
struct Columns {
    var widths: [Int]

    func line(_ cells: [String]) -> String {
        var out = ""
        for (i, cell) in cells.enumerated() {
            if i == cells.count - 1 || i >= widths.count {
                out += cell
            } else {
                // Native padding: Foundation's padding(toLength:) bridges and costs a fifth of a
                // streamed conntrack table's time.
                out += cell + String(repeating: " ", count: max(0, widths[i] - cell.count) + 2)
            }
        }
        return out
    }

    /// Widths that fit every row (for tables printed at once).
    static func fitting(_ rows: [[String]]) -> Columns {
        var widths: [Int] = []
        for row in rows {
            for (i, cell) in row.enumerated() {
                if i < widths.count { widths[i] = max(widths[i], cell.count) } else { widths.append(cell.count) }
            }
        }
        return Columns(widths: widths)
    }
}

/// `label:` padded so values line up, as Cilium's status does.
func labelled(_ label: String, _ value: String) -> String {
    label + ":" + String(repeating: " ", count: max(0, 15 - label.count)) + value
}

/// 3725 seconds as "1h2m5s".
func duration(_ seconds: Double) -> String {
    var s = Int(seconds.rounded(.down))
    let d = s / 86_400; s %= 86_400
    let h = s / 3_600; s %= 3_600
    let m = s / 60; s %= 60
    if d > 0 { return "\(d)d\(h)h" }
    if h > 0 { return "\(h)h\(m)m" }
    if m > 0 { return "\(m)m\(s)s" }
    return "\(s)s"
}

extension FlowTuple {
    /// "10.244.1.2:40000 -> 100.0.0.2:8080" (IPv6 addresses in brackets).
    var text: String {
        "\(Self.endpoint(src, sport)) -> \(Self.endpoint(dst, dport))"
    }

    /// "10.244.1.2:40000", "[fd00::1]:40000".
    static func endpoint(_ address: IPAddress, _ port: UInt16) -> String {
        if case .v6 = address { return "[\(address)]:\(port)" }
        return "\(address):\(port)"
    }
}
