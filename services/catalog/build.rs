fn main() {
    shopmesh_protogen::compile(&["shopmesh/catalog/v1/catalog.proto"], false);
}
