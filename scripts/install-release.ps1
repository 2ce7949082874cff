# Installs the released mcp-sidecar.exe for Windows x64, after checking the archive against its
# published SHA-256 (issue 12). Nothing is installed when the check fails.
#
#   powershell -ExecutionPolicy Bypass -c "irm https://github.com/mcp-sidecar/mcp-sidecar/releases/latest/download/install-release.ps1 | iex"
#
# $env:MCP_SIDECAR_VERSION (a tag; default latest), $env:MCP_SIDECAR_INSTALL_DIR (default
# %LOCALAPPDATA%\Programs\mcp-sidecar), $env:MCP_SIDECAR_DOWNLOAD_URL (where the archives are).
$ErrorActionPreference = 'Stop'
$repo = if ($env:MCP_SIDECAR_REPO) { $env:MCP_SIDECAR_REPO } else { 'mcp-sidecar/mcp-sidecar' }
$version = if ($env:MCP_SIDECAR_VERSION) { $env:MCP_SIDECAR_VERSION } else { 'latest' }
$dir = if ($env:MCP_SIDECAR_INSTALL_DIR) { $env:MCP_SIDECAR_INSTALL_DIR } else { Join-Path $env:LOCALAPPDATA 'Programs\mcp-sidecar' }
$base = if ($env:MCP_SIDECAR_DOWNLOAD_URL) { $env:MCP_SIDECAR_DOWNLOAD_URL }
        elseif ($version -eq 'latest') { "https://github.com/$repo/releases/latest/download" }
        else { "https://github.com/$repo/releases/download/$version" }
$archive = 'mcp-sidecar-x86_64-pc-windows-msvc.zip'
$tmp = Join-Path ([IO.Path]::GetTempPath()) ([Guid]::NewGuid())
New-Item -ItemType Directory $tmp | Out-Null
try {
  Invoke-WebRequest -UseBasicParsing "$base/$archive" -OutFile "$tmp\$archive"
  Invoke-WebRequest -UseBasicParsing "$base/$archive.sha256" -OutFile "$tmp\$archive.sha256"
  $expected = ((Get-Content "$tmp\$archive.sha256" -Raw).Trim() -split '\s+')[0].ToLower()
  $actual = (Get-FileHash -Algorithm SHA256 "$tmp\$archive").Hash.ToLower()
  if ($actual -ne $expected) {
    throw "install-release: $archive does not match its SHA-256 ($actual, published $expected): nothing was installed; download again, or report it"
  }
  Expand-Archive "$tmp\$archive" -DestinationPath "$tmp\x"
  New-Item -ItemType Directory -Force $dir | Out-Null
  Copy-Item -Force "$tmp\x\mcp-sidecar.exe" (Join-Path $dir 'mcp-sidecar.exe')
  $exe = Join-Path $dir 'mcp-sidecar.exe'
  Write-Host "install-release: installed $(& $exe --version) at $exe (SHA-256 checked)"
  Write-Host "In claude_desktop_config.json use `"command`": `"$($exe -replace '\\','\\')`""
} finally {
  Remove-Item -Recurse -Force $tmp
}
