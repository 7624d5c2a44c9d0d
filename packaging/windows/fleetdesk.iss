; FleetDesk for Windows: an Inno Setup 6 script (https://jrsoftware.org/isinfo.php) over the PyInstaller bundle
; that packaging/fleetdesk.spec freezes on Windows. Built by packaging/windows/build.ps1, which passes:
;   /DAppVersion=<fleetdesk.__version__>  /DBundleDir=<...\build\dist\bundle\fleetdesk>  /DIconFile=<...\fleetdesk.ico>
; and writes dist\fleetdesk-<version>-windows-x64-setup.exe.
;
; What the operator gets:
; - a per-user install by default (no administrator needed on a locked-down plant laptop), into
;   %LOCALAPPDATA%\Programs\FleetDesk; an administrator may choose "all users" (Program Files) in the first dialog;
; - a Start-menu entry "FleetDesk" (the window), an optional desktop icon, and `fleetdesk` on the user's PATH
;   (optional task) for the command line;
; - the operator's data stays where FleetDesk keeps it, never under the program folder: platformdirs puts the
;   inventory, artifacts, keys and settings in %LOCALAPPDATA%\fleetdesk\fleetdesk, secrets go to the Windows
;   Credential Manager (keyring's WinVaultKeyring). Uninstall removes the program folder only: that data stays,
;   so reinstalling or upgrading finds the fleet as it was.
; - an upgrade installs over the same AppId: the program folder is replaced, the data is untouched.

#ifndef AppVersion
  #error Pass /DAppVersion=<version> (packaging/windows/build.ps1 does)
#endif
#ifndef BundleDir
  #error Pass /DBundleDir=<the PyInstaller bundle folder> (packaging/windows/build.ps1 does)
#endif
#ifndef IconFile
  #error Pass /DIconFile=<fleetdesk.ico> (packaging/windows/build.ps1 draws it)
#endif
#ifndef OutputDir
  #define OutputDir "..\..\dist"
#endif

[Setup]
; One AppId for every version: what makes a newer setup an upgrade of the installed one. Never change it.
AppId={{6E0C3F7A-2B1D-4C59-9E8A-F1EE7D5A0C21}
AppName=FleetDesk
AppVersion={#AppVersion}
AppVerName=FleetDesk {#AppVersion}
AppPublisher=FleetDesk
AppComments=Run a fleet of edge AI devices from this laptop, with no cloud.
DefaultDirName={autopf}\FleetDesk
DefaultGroupName=FleetDesk
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#OutputDir}
OutputBaseFilename=fleetdesk-{#AppVersion}-windows-x64-setup
SetupIconFile={#IconFile}
UninstallDisplayIcon={app}\fleetdesk-gui.exe
UninstallDisplayName=FleetDesk {#AppVersion}
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
; The programs may be running (the window, or a rollout driven from a terminal): ask to close them first.
CloseApplications=yes
RestartApplications=no
ChangesEnvironment=yes
; Code signing: build.ps1 passes /DSignTool=... when a certificate is configured (see packaging/README.md).
#ifdef SignTool
SignTool={#SignTool}
SignedUninstaller=yes
#endif

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "addtopath"; Description: "Add the fleetdesk command to PATH (for this user)"; GroupDescription: "Command line:"

[Files]
; The whole one-folder bundle: both programs, the Python runtime, Qt, onnxruntime and the data folders.
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[InstallDelete]
; An upgrade replaces the bundle whole: files a newer version no longer ships must not linger beside it.
Type: filesandordirs; Name: "{app}\_internal"

[Icons]
Name: "{autoprograms}\FleetDesk"; Filename: "{app}\fleetdesk-gui.exe"; WorkingDir: "{userdocs}"; Comment: "Run a fleet of edge AI devices"
Name: "{autodesktop}\FleetDesk"; Filename: "{app}\fleetdesk-gui.exe"; WorkingDir: "{userdocs}"; Tasks: desktopicon

[Registry]
; The user's PATH (per-user install) or the machine's (all users), only with the "addtopath" task; removed on
; uninstall by the [Code] below, since Inno Setup does not edit a PATH string itself.
Root: HKA; Subkey: "{code:EnvironmentKey}"; ValueType: expandsz; ValueName: "Path"; ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NotOnPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\fleetdesk-gui.exe"; Description: "{cm:LaunchProgram,FleetDesk}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; Only what the program folder holds. %LOCALAPPDATA%\fleetdesk (inventory, artifacts, keys, settings) and the
; Credential Manager's entries are the operator's and stay.
Type: filesandordirs; Name: "{app}\_internal"

[Code]
function EnvironmentKey(Param: String): String;
begin
  if IsAdminInstallMode then
    Result := 'SYSTEM\CurrentControlSet\Control\Session Manager\Environment'
  else
    Result := 'Environment';
end;

function PathRoot: Integer;
begin
  if IsAdminInstallMode then
    Result := HKEY_LOCAL_MACHINE
  else
    Result := HKEY_CURRENT_USER;
end;

function NotOnPath(Folder: String): Boolean;
var
  Path: String;
begin
  if not RegQueryStringValue(PathRoot, EnvironmentKey(''), 'Path', Path) then
    Result := True
  else
    Result := Pos(';' + Uppercase(Folder) + ';', ';' + Uppercase(Path) + ';') = 0;
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
var
  Path, Folder: String;
  At: Integer;
begin
  if CurUninstallStep <> usPostUninstall then
    exit;
  if not RegQueryStringValue(PathRoot, EnvironmentKey(''), 'Path', Path) then
    exit;
  Folder := ExpandConstant('{app}');
  At := Pos(';' + Uppercase(Folder), Uppercase(Path));
  if At > 0 then
  begin
    Delete(Path, At, Length(Folder) + 1);
    RegWriteExpandStringValue(PathRoot, EnvironmentKey(''), 'Path', Path);
  end;
end;
