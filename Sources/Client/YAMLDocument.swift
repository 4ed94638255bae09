import Foundation
import Yams

/// An API body (JSON) as a YAML document: the same keys in the same order and the same values,
/// in block style. JSON is YAML's flow style, so Yams reads the body as it is; strings lose their
/// quotes unless YAML would read them back as something else (`"true"`, `"80"`, `""`).
struct YAMLDocument {
    let text: String

    init(json: Data) throws {
        let source = String(decoding: json, as: UTF8.self)
        guard let node = try Yams.compose(yaml: source) else {
            throw ClientError(description: "masqd answered with an empty body where a document was expected")
        }
        text = try Yams.serialize(node: Self.block(node), width: -1, allowUnicode: true)
    }

    /// Every scalar gets an explicit tag, so the emitter does not run Yams' tag regexes on it (they
    /// were three fifths of a streamed conntrack list's time); the tag is not printed.
    private static func block(_ node: Node) -> Node {
        switch node {
        case .scalar(let scalar) where scalar.style == .doubleQuoted:
            // A JSON string: plain unless YAML would read it as another type, then quoted.
            if mayResolveAsNonString(scalar.string) { return .scalar(scalar.string.represented()) }
            return .scalar(Node.Scalar(scalar.string, Tag(.str), .plain))
        case .scalar(let scalar):
            // A JSON number, true, false or null: YAML reads each as JSON does.
            let tag: Tag.Name = switch scalar.string {
            case "true", "false": .bool
            case "null": .null
            default: scalar.string.contains(where: { ".eE".contains($0) }) ? .float : .int
            }
            return .scalar(Node.Scalar(scalar.string, Tag(tag), .plain))
        case .sequence(let sequence):
            return .sequence(Node.Sequence(sequence.map(block), sequence.tag, .block))
        case .mapping(let mapping):
            return .mapping(Node.Mapping(mapping.map { (block($0.key), block($0.value)) }, mapping.tag, .block))
        }
    }

    /// False only for strings that none of YAML 1.1's implicit types (Yams' default resolver:
    /// bool, int, float, null, timestamp, merge, value) can match, without running its regexes:
    /// those all start with a digit, a sign, `.`, `~`, `<` or `=`, or are a bool or null word; and
    /// none has two dots (so addresses like 10.244.1.2 are plain strings).
    static func mayResolveAsNonString(_ text: String) -> Bool {
        guard let first = text.first else { return true }
        if "0123456789+-.~<=".contains(first) { return text.filter { $0 == "." }.count < 2 }
        return ["yes", "no", "true", "false", "on", "off", "null"].contains(text.lowercased())
    }
}
