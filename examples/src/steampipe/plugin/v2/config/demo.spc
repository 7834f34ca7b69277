connection "demo" {
  plugin = "demo"
  # v2
}
