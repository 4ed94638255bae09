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

    private static func block(_ node: Node) -> Node {
        switch node {
        case .scalar(let scalar):
            // A JSON string (double-quoted): as Yams represents a Swift String, quoted only when
            // plain it would read as another type.
            return .scalar(scalar.style == .doubleQuoted ? scalar.string.represented() : scalar)
        case .sequence(let sequence):
            return .sequence(Node.Sequence(sequence.map(block), sequence.tag, .block))
        case .mapping(let mapping):
            return .mapping(Node.Mapping(mapping.map { (block($0.key), block($0.value)) }, mapping.tag, .block))
        }
    }
}
