# FleetDesk for Windows: the frozen bundle (packaging/fleetdesk.spec) and its installer (fleetdesk.iss, Inno Setup 6),
# the Windows counterpart of packaging/build.sh. Not built or run on the Linux machines FleetDesk is developed on
# (no Windows, no Inno Setup there): see packaging/README.md, "Windows".
#
# Usage, in PowerShell from the checkout:  packaging\windows\build.ps1 [-Python py] [-Iscc iscc.exe] [-SignTool "..."]
# Needs: 64-bit CPython 3.11 with the `dist` extra installed (py -m pip install -e .[dist]), Inno Setup 6 (iscc),
# git. Writes dist\fleetdesk-<version>-windows-x64-setup.exe.
param(
    [string]$Python = "py",
    [string]$Iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe",
    [string]$SignTool = ""
)
$ErrorActionPreference = "Stop"
$Root = (Resolve-Path "$PSScriptRoot\..\..").Path
Set-Location $Root
$Build = Join-Path $Root "build\dist-windows"
$Dist = Join-Path $Root "dist"

# Version and commit from fleetdesk itself (pyproject.toml is the one place), as build.sh does.
$VersionCommit = (& $Python -c "import fleetdesk; print(fleetdesk.__version__, fleetdesk.build_commit())").Trim().Split(" ")
$env:FLEETDESK_VERSION = $VersionCommit[0]
$env:FLEETDESK_COMMIT = $VersionCommit[1]
$env:SOURCE_DATE_EPOCH = (git log -1 --format=%ct).Trim()
$env:PYTHONHASHSEED = "0"
$env:PYINSTALLER_CONFIG_DIR = Join-Path $Build "pyinstaller-config"

Remove-Item -Recurse -Force -ErrorAction SilentlyContinue (Join-Path $Build "work"), (Join-Path $Build "bundle")
New-Item -ItemType Directory -Force $Build, $Dist | Out-Null

# The programs' icon, drawn from the same SVG as the Linux icons.
$env:FLEETDESK_ICON = Join-Path $Build "fleetdesk.ico"
$env:QT_QPA_PLATFORM = "offscreen"
& $Python packaging\render_icon.py --ico resources\icons\fleetdesk.svg $env:FLEETDESK_ICON
if ($LASTEXITCODE -ne 0) { throw "render_icon.py failed" }
Remove-Item Env:QT_QPA_PLATFORM

Write-Host "fleetdesk $($env:FLEETDESK_VERSION) (commit $($env:FLEETDESK_COMMIT)): freezing"
& $Python -m PyInstaller --noconfirm --clean --log-level WARN `
    --workpath (Join-Path $Build "work") --distpath (Join-Path $Build "bundle") packaging\fleetdesk.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
$Bundle = Join-Path $Build "bundle\fleetdesk"

# The frozen programs must answer before they are packed.
& (Join-Path $Bundle "fleetdesk.exe") --version
if ($LASTEXITCODE -ne 0) { throw "the frozen fleetdesk.exe does not start" }

$IsccArgs = @("/DAppVersion=$($env:FLEETDESK_VERSION)", "/DBundleDir=$Bundle", "/DIconFile=$($env:FLEETDESK_ICON)",
              "/DOutputDir=$Dist")
if ($SignTool) { $IsccArgs += "/DSignTool=$SignTool" }
& $Iscc @IsccArgs packaging\windows\fleetdesk.iss
if ($LASTEXITCODE -ne 0) { throw "Inno Setup failed" }
Get-Item (Join-Path $Dist "fleetdesk-$($env:FLEETDESK_VERSION)-windows-x64-setup.exe") | Format-List Name, Length
