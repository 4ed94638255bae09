import API
import ArgumentParser
import Foundation

/// How results are printed.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    /// Aligned text for people; conntrack list's narrow table.
    case text
    /// conntrack list with every column (other commands print their text).
    case wide
    /// The API's JSON as masqd sent it; conntrack list prints NDJSON, one flow a line.
    case json
    /// The API's JSON as YAML, same keys and order; conntrack list prints one document a flow.
    case yaml

    /// The API's documents rather than text.
    var isDocument: Bool { self == .json || self == .yaml }
}

/// The options every command takes, before or after the subcommand: the root command declares
/// them too, and ArgumentParser hands the root's parsed group to each subcommand's
/// `@OptionGroup`, wherever on the line they were typed.
struct GlobalOptions: ParsableArguments {
    static let defaultSocket = "/run/masq/masqd.sock"

    @Option(name: .long, help: ArgumentHelp(
        "masqd's control socket, not empty (default: $MASQ_SOCKET unless empty, else \(GlobalOptions.defaultSocket)).",
        valueName: "path"))
    var socket: String?

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp(
        "Give up when masqd has not answered within this many seconds (a streamed command: not begun to answer); 0: wait forever.",
        valueName: "seconds"))
    var requestTimeout = RequestTimeout(seconds: 30)

    @Option(name: [.short, .customLong("output")], help: ArgumentHelp(
        "Output format: text, wide (conntrack list's full columns), json or yaml (the API's documents).",
        valueName: "format"))
    var output: OutputFormat = .text

    /// --socket, else MASQ_SOCKET, else the default path.
    var socketPath: String {
        if let socket { return socket }
        if let env = ProcessInfo.processInfo.environment["MASQ_SOCKET"], !env.isEmpty { return env }
        return Self.defaultSocket
    }

    var client: UnixHTTPClient {
        UnixHTTPClient(socketPath: socketPath, timeout: requestTimeout.seconds > 0 ? requestTimeout : nil)
    }

    func validate() throws {
        if socket?.isEmpty == true {
            throw ValidationError("--socket: must not be empty (omit it for $MASQ_SOCKET or \(Self.defaultSocket))")
        }
        if !(0...RequestTimeout.maxSeconds).contains(requestTimeout.seconds) {
            throw ValidationError("--request-timeout: must be 0 (no limit) to \(Int(RequestTimeout.maxSeconds)) seconds")
        }
    }

    /// Prints an API body as `-o json` or `-o yaml` asks; false for text (the caller prints it).
    func printedDocument(_ raw: Data) throws -> Bool {
        switch output {
        case .json: printRaw(raw)
        case .yaml: print(try YAMLDocument(json: raw).text, terminator: "")
        case .text, .wide: return false
        }
        return true
    }
}

extension RequestTimeout: ExpressibleByArgument {
    init?(argument: String) {
        guard let seconds = Double(argument) else { return nil }
        self.init(seconds: seconds)
    }

    var defaultValueDescription: String { text }
}

/// The options of commands that print a table.
struct TableOptions: ParsableArguments {
    @Flag(help: "Print the table's rows without its header line.")
    var noHeaders = false
}

/// The conntrack filters, shared by `conntrack list` and `conntrack flush`.
struct ConntrackFilterOptions: ParsableArguments {
    @Option(help: "Only flows of this family: ipv4 or ipv6.")
    var family: FamilyArgument?

    @Option(help: "Only flows of this protocol: tcp, udp, icmp or icmpv6.")
    var proto: ProtocolArgument?

    @Option(help: ArgumentHelp("Only flows whose original source is this address or inside this CIDR.", valueName: "address|cidr"))
    var src: String?

    @Option(help: ArgumentHelp("Only flows whose original destination is this address or inside this CIDR.", valueName: "address|cidr"))
    var dst: String?

    @Option(parsing: .unconditional, help: "Only flows with this original source port (ICMP: the echo id).")
    var sport: UInt16?

    @Option(parsing: .unconditional, help: "Only flows with this original destination port.")
    var dport: UInt16?

    func validate() throws {
        for (flag, value) in [("--src", src), ("--dst", dst)] {
            guard let value else { continue }
            do {
                _ = try IPPrefix(value)
            } catch {
                throw ValidationError("\(flag): \(error.description.replacingOccurrences(of: "is not a CIDR", with: "is not an address or CIDR"))")
            }
        }
    }

    /// The API's filter (validated, so the prefixes parse).
    var filter: ConntrackFilter {
        ConntrackFilter(family: family?.value, proto: proto?.value, src: src.flatMap { try? IPPrefix($0) },
                        dst: dst.flatMap { try? IPPrefix($0) }, sport: sport, dport: dport)
    }

    /// No filter given: the filter matches every flow.
    var isEmpty: Bool { filter == ConntrackFilter() }
}

enum FamilyArgument: String, ExpressibleByArgument, CaseIterable {
    case ipv4, ipv6
    var value: IPFamily { self == .ipv4 ? .ipv4 : .ipv6 }
}

enum ProtocolArgument: String, ExpressibleByArgument, CaseIterable {
    case tcp, udp, icmp, icmpv6
    var value: L4Protocol { L4Protocol(rawValue: rawValue) ?? .unknown }
}
