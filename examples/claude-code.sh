#!/usr/bin/env sh
# Adding remote MCP servers to Claude Code through mcp-sidecar. The key goes in the server's
# environment (-e), never in its arguments. Add --scope user to make a server available in
# every project.

claude mcp add investra -e INVESTRA_API_KEY=inv_your_key_here -- mcp-sidecar --preset investra
claude mcp add converra -e CONVERRA_API_KEY=sk_live_your_key_here -- mcp-sidecar --preset converra
claude mcp add ai2fin -e AI2FIN_API_KEY=mcp_your_key_here -- \
    mcp-sidecar --preset ai2fin --url https://YOUR-AI2FIN-HOST/mcp/inspector

# Any server: name the variable that holds the key and how it is sent.
claude mcp add example -e EXAMPLE_KEY=your_key_here -- \
    mcp-sidecar https://mcp.example.com/mcp --api-key-env EXAMPLE_KEY --auth-header x-api-key
