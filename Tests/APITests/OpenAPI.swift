import API
import Foundation
import Yams

/// docs/api/openapi.yaml, and a checker for live responses against it: the status and media
/// type must be documented for the operation, and the body must fit the schema (required
/// fields present, types and enums right, and no field the document does not describe).
struct OpenAPIDocument {
    let root: [String: Any]

    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs/api/openapi.yaml").path

    static func load() throws -> OpenAPIDocument {
        try OpenAPIDocument(yaml: String(contentsOfFile: path, encoding: .utf8))
    }

    init(yaml text: String) throws {
        guard let root = try Yams.load(yaml: text) as? [String: Any] else { throw TestFailure("openapi.yaml: not a mapping") }
        self.root = root
    }

    var paths: [String: [String: Any]] { (root["paths"] as? [String: [String: Any]]) ?? [:] }

    /// The Schema Object keywords of OpenAPI 3.0 (plus `x-` extensions).
    static let schemaKeywords: Set<String> = [
        "$ref", "title", "description", "type", "format", "enum", "default", "example", "nullable",
        "required", "properties", "additionalProperties", "items", "allOf", "oneOf", "anyOf", "not",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength",
        "pattern", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
        "readOnly", "writeOnly", "deprecated", "discriminator", "xml", "externalDocs",
    ]

    /// Structural problems a YAML parse alone lets through: a plain scalar such as
    /// `{ type: integer, description: One, two. }` silently becomes an extra key `two.` with a
    /// null value. Reports keys with null values anywhere, schema keys that are no Schema Object
    /// keyword, non-string descriptions and `$ref`s that resolve to nothing.
    func structuralProblems() -> [String] {
        var problems: [String] = []
        func walk(_ node: Any, at path: String, isSchema: Bool) {
            if let list = node as? [Any] {
                for (i, item) in list.enumerated() { walk(item, at: "\(path)[\(i)]", isSchema: false) }
                return
            }
            guard let map = node as? [String: Any] else { return }
            for (key, value) in map {
                let here = "\(path)/\(key)"
                if value is NSNull { problems.append("\(here): null value (an unquoted ', ' or ': ' in a flow mapping?)") }
                if key == "description", !(value is String) { problems.append("\(here): not a string") }
                if key == "$ref", let ref = value as? String, resolve(ref) == nil { problems.append("\(here): unresolved \(ref)") }
                if isSchema, !Self.schemaKeywords.contains(key), !key.hasPrefix("x-") {
                    problems.append("\(here): '\(key)' is not a Schema Object keyword")
                }
                switch (isSchema, key) {
                case (false, "schema"), (true, "items"), (true, "not"), (true, "additionalProperties"):
                    walk(value, at: here, isSchema: true)
                case (true, "properties"):
                    for (name, schema) in (value as? [String: Any]) ?? [:] { walk(schema, at: "\(here)/\(name)", isSchema: true) }
                case (true, "allOf"), (true, "oneOf"), (true, "anyOf"):
                    for (i, schema) in ((value as? [Any]) ?? []).enumerated() { walk(schema, at: "\(here)[\(i)]", isSchema: true) }
                case (false, "schemas") where path == "/components":
                    for (name, schema) in (value as? [String: Any]) ?? [:] { walk(schema, at: "\(here)/\(name)", isSchema: true) }
                default:
                    walk(value, at: here, isSchema: false)
                }
            }
        }
        walk(root, at: "", isSchema: false)
        return problems.sorted()
    }

    /// The documented (path, method) pairs.
    var operations: Set<String> {
        Set(paths.flatMap { path, ops in ops.keys.map { "\($0.uppercased()) \(path)" } })
    }

    /// Problems with one live response; empty when it conforms.
    func check(method: String, path: String, status: Int, contentType: String?, body: Data) -> [String] {
        guard let operation = paths[path]?[method.lowercased()] as? [String: Any] else {
            return ["\(method) \(path) is not documented"]
        }
        guard let responses = operation["responses"] as? [String: Any],
              var response = responses[String(status)] as? [String: Any] else {
            return ["\(method) \(path): status \(status) is not documented"]
        }
        if let ref = response["$ref"] as? String, let resolved = resolve(ref) { response = resolved }
        let media = (contentType ?? "").split(separator: ";").first.map { String($0).trimmingCharacters(in: .whitespaces) } ?? ""
        guard let content = response["content"] as? [String: Any], let mediaEntry = content[media] as? [String: Any],
              let schema = mediaEntry["schema"] as? [String: Any] else {
            return ["\(method) \(path) \(status): media type '\(media)' is not documented"]
        }
        if media == "text/plain" { return [] }
        let documents: [Data] = media == MediaType.ndjson
            ? body.split(separator: UInt8(ascii: "\n")).map { Data($0) } : [body]
        var problems: [String] = []
        for document in documents {
            do {
                let value = try JSONDecoder().decode(JSONValue.self, from: document)
                problems += validate(value, schema, at: "\(method) \(path) \(status)")
            } catch {
                problems.append("\(method) \(path) \(status): body is not JSON: \(error)")
            }
        }
        return problems
    }

    private func resolve(_ ref: String) -> [String: Any]? {
        var node: Any = root
        for part in ref.dropFirst(2).split(separator: "/") {
            guard let next = (node as? [String: Any])?[String(part)] else { return nil }
            node = next
        }
        return node as? [String: Any]
    }

    func validate(_ value: JSONValue, _ schema: [String: Any], at where_: String) -> [String] {
        var schema = schema
        if let ref = schema["$ref"] as? String {
            guard let resolved = resolve(ref) else { return ["\(where_): unresolved \(ref)"] }
            schema = resolved
        }
        let type = schema["type"] as? String
        var problems: [String] = []
        func wrong(_ expected: String) -> [String] { ["\(where_): expected \(expected), got \(value)"] }
        switch (type, value) {
        case ("object", .object(let fields)):
            let properties = (schema["properties"] as? [String: Any]) ?? [:]
            for required in (schema["required"] as? [String]) ?? [] where fields[required] == nil {
                problems.append("\(where_): missing required '\(required)'")
            }
            for (name, field) in fields {
                guard let fieldSchema = properties[name] as? [String: Any] else {
                    problems.append("\(where_): field '\(name)' is not documented")
                    continue
                }
                problems += validate(field, fieldSchema, at: "\(where_).\(name)")
            }
        case ("array", .array(let items)):
            if let itemSchema = schema["items"] as? [String: Any] {
                for (i, item) in items.enumerated() { problems += validate(item, itemSchema, at: "\(where_)[\(i)]") }
            }
        case ("string", .string(let s)):
            if let options = schema["enum"] as? [String], !options.contains(s) {
                problems.append("\(where_): '\(s)' is not one of \(options)")
            }
        case ("integer", .integer(let n)):
            if let min = schema["minimum"] as? Int, n < min { problems.append("\(where_): \(n) < \(min)") }
            if let max = schema["maximum"] as? Int, n > max { problems.append("\(where_): \(n) > \(max)") }
        case ("number", .integer), ("number", .number), ("boolean", .bool):
            break
        default:
            return wrong(type ?? "?")
        }
        return problems
    }
}

/// A JSON value with integers, numbers and booleans kept apart (JSONSerialization would not).
enum JSONValue: Decodable, CustomStringConvertible {
    case null, bool(Bool), integer(Int64), number(Double), string(String)
    case array([JSONValue]), object([String: JSONValue])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int64.self) { self = .integer(i) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    var description: String {
        switch self {
        case .null: "null"
        case .bool(let b): "\(b)"
        case .integer(let i): "\(i)"
        case .number(let d): "\(d)"
        case .string(let s): "\"\(s)\""
        case .array(let a): "array(\(a.count))"
        case .object(let o): "object(\(o.keys.sorted()))"
        }
    }
}
