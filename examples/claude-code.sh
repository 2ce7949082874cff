#!/usr/bin/env sh
# Adding remote MCP servers to Claude Code through mcp-sidecar. No key goes on a command line
# (any local user can read a process's arguments): Claude Code passes its own environment to the
# servers it starts, so export the key where you start claude (your shell profile), or let
# mcp-sidecar keep it in Claude Code's config file (~/.claude.json, private to you).
# Add --scope user to make a server available in every project.

# 1. The key in your environment (e.g. in ~/.profile):
#      export INVESTRA_API_KEY=inv_your_key_here
claude mcp add investra -- mcp-sidecar --preset investra
claude mcp add converra -- mcp-sidecar --preset converra
claude mcp add ai2fin -- mcp-sidecar --preset ai2fin --url https://YOUR-AI2FIN-HOST/mcp/inspector

# Any server: name the variable that holds the key and how it is sent.
claude mcp add example -- \
    mcp-sidecar https://mcp.example.com/mcp --api-key-env EXAMPLE_KEY --auth-header x-api-key

# 2. Or keep the key in Claude Code's config file (user scope), with the key in this shell only:
#      INVESTRA_API_KEY=inv_... mcp-sidecar install --client claude-code --store-key --preset investra
