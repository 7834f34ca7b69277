connection "demo" {
  plugin = "demo"
  # v1
}
