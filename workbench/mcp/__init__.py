"""The MCP server: the learner's tools for AI agents."""
