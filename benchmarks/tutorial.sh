#!/usr/bin/env bash
# The tutorial's sequence ("Managed Identity for Zero Stored Secrets", /work/shared/seed/000_c4600e33cc2e06e4.txt) as
# an operator runs it for a fleet with azure-cli, psql, kubectl and a small pyodbc script: once per server or cluster
# for the server-wide steps, then application after application, one command at a time.
#
#   tutorial.sh SERVERS_FILE APPS_FILE
#
# Both files are tab-separated, written by benchmarks/baseline_az.py from the fleet's inventory ("-" = empty):
#   SERVERS_FILE: kind (sql | postgres | cosmos | aks)  name  resource_group  host  port  owner (PostgreSQL: the
#                 role that owns the application schemas)
#   APPS_FILE:    app  identity  identity_rg  workload_type (vm | app_service | aks)  workload_name  workload_rg
#                 db_type (sql | postgres | cosmos)  server  server_rg  database  access  scope  namespace  service_account
#                 deployment
#                 access: SQL roles (comma-separated), the file of PostgreSQL grants, or the Cosmos role definition id.
# Environment: AZURE_CONFIG_DIR (logged in with `az login --identity`), ADMIN_NAME / ADMIN_RG (the identity that is
# logged in: the admin the tutorial takes from `az ad signed-in-user show`), BENCH_LOG (one line per command run:
# tool, command, seconds, statements), TUTORIAL_SQL (benchmarks/tutorial_sql.py), PYTHON (with pyodbc), KUBECONFIG.
#
# Where the tutorial is wrong (/work/shared/AZURE_FACTS.md), this does what a careful operator following it does to
# reach the same end state as playbooks/migrate.yml; each place says "Deviation". No token is printed: they go from az
# to psql through PGPASSWORD and to pyodbc through a pipe.
set -euo pipefail

SERVERS_FILE=$1
APPS_FILE=$2
AKS_SERVER_APP=6dae42f8-4368-4678-94ff-3960e28e3630  # the AKS Entra server application (what kubelogin asks for)

# Every az, psql, pyodbc and kubectl run goes through `timed`, which logs its tool, command and duration.
timed() {
    local tool=$1 what=$2 statements=$3 started=$EPOCHREALTIME status=0
    shift 3
    "$@" || status=$?
    printf '%s\t%s\t%s\t%s\n' "$tool" "$what" "$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')" \
        "$statements" >>"$BENCH_LOG"
    return "$status"
}
# az's command name (the words before the first option) is what the log keeps.
az() {
    local words=() arg
    for arg in "$@"; do
        [[ $arg == -* ]] && break
        words+=("$arg")
    done
    timed az "${words[*]}" 0 command az "$@" --only-show-errors
}

# Deviation: the tutorial's admin is the signed-in user (`az ad signed-in-user show`, Microsoft Graph). Here the
# operator is signed in as a managed identity, which is the admin: its object id for PostgreSQL, its client id as the
# SQL admin's SID (Azure SQL identifies applications and managed identities by client id).
ADMIN_OID=$(az identity show --name "$ADMIN_NAME" --resource-group "$ADMIN_RG" --query principalId -o tsv)
ADMIN_CLIENT_ID=$(az identity show --name "$ADMIN_NAME" --resource-group "$ADMIN_RG" --query clientId -o tsv)

# --- Server-wide steps, once per server (Part 1 step 2, Part 2 step 1, Part 3 step 1, Part 4 step 1) ---
while IFS=$'\t' read -r -u 3 kind name rg host port owner; do
    case $kind in
    sql)
        az sql server ad-admin create --server "$name" --resource-group "$rg" \
            --display-name "$ADMIN_NAME" --object-id "$ADMIN_CLIENT_ID" >/dev/null
        # Deviation: the CLI names the server --name here (it rejects the tutorial's --server).
        az sql server ad-only-auth enable --name "$name" --resource-group "$rg" >/dev/null
        ;;
    postgres)
        # Deviation: `parameter set azure.extensions=pgaadauth` does not enable Entra (pgaadauth is not an allowed
        # value); authConfig does. `ad-admin` is now `microsoft-entra-admin`.
        az postgres flexible-server update --name "$name" --resource-group "$rg" \
            --microsoft-entra-auth Enabled >/dev/null
        az postgres flexible-server microsoft-entra-admin create --server-name "$name" --resource-group "$rg" \
            --display-name "$ADMIN_NAME" --object-id "$ADMIN_OID" --type ServicePrincipal >/dev/null
        # Deviation: `password_encryption=off` was removed in PostgreSQL 10 and never disabled passwords;
        # authConfig.passwordAuth does.
        az postgres flexible-server update --name "$name" --resource-group "$rg" --password-auth Disabled >/dev/null
        # Deviation: the Entra admin is not a superuser, so it can grant on the application's tables only as a
        # member of their owner (a careful operator meets "permission denied" at the first GRANT otherwise).
        PGPASSWORD=$(az account get-access-token --resource-type oss-rdbms --query accessToken -o tsv)
        export PGPASSWORD
        timed psql "GRANT owner" 1 psql -X -q -v ON_ERROR_STOP=1 -o /dev/null \
            "host=$host port=$port dbname=postgres user=$ADMIN_NAME sslmode=verify-full" \
            -c "GRANT \"$owner\" TO \"$ADMIN_NAME\""
        unset PGPASSWORD
        ;;
    cosmos)
        # Deviation: --disable-key-based-metadata-write-access only stops metadata writes with keys; data access
        # with keys goes on. disableLocalAuth is what makes the account Entra-only.
        az cosmosdb update --name "$name" --resource-group "$rg" --disable-local-auth true >/dev/null
        ;;
    aks)
        az aks update --name "$name" --resource-group "$rg" --enable-oidc-issuer --enable-workload-identity >/dev/null
        # kubectl's credentials: the cluster's kubeconfig, its kubelogin user turned into az (what
        # `kubelogin convert-kubeconfig -l azurecli` does; kubelogin is not installed here).
        az aks get-credentials --name "$name" --resource-group "$rg" --file "$KUBECONFIG" --overwrite-existing
        timed kubectl "config set-credentials" 0 kubectl config set-credentials \
            "$(kubectl config view -o jsonpath='{.users[0].name}')" \
            --exec-api-version=client.authentication.k8s.io/v1beta1 --exec-command="$(dirname "$0")/aks_token.sh" \
            --exec-arg="$AKS_SERVER_APP" --exec-interactive-mode=Never \
            >/dev/null
        ;;
    esac
done 3<"$SERVERS_FILE"

# --- Per application ---
while IFS=$'\t' read -r -u 3 app identity identity_rg workload_type workload_name workload_rg db_type server server_rg \
    database access scope namespace service_account deployment; do
    # Part 1 step 1: the identity, then its ids, one `az identity show` each as the tutorial has it.
    az identity create --name "$identity" --resource-group "$identity_rg" --location eastus2 >/dev/null
    MI_CLIENT_ID=$(az identity show --name "$identity" --resource-group "$identity_rg" --query clientId -o tsv)
    MI_PRINCIPAL_ID=$(az identity show --name "$identity" --resource-group "$identity_rg" --query principalId -o tsv)
    MI_RESOURCE_ID=$(az identity show --name "$identity" --resource-group "$identity_rg" --query id -o tsv)

    read -r _kind _name _rg db_host db_port _owner < <(awk -F'\t' -v k="$db_type" -v n="$server" \
        '$1 == k && $2 == n' "$SERVERS_FILE")
    case $db_type in
    sql)
        # Part 1 step 3, connected as the Entra admin with pyodbc (sqlcmd is not installable here).
        # Deviation: CREATE USER ... FROM EXTERNAL PROVIDER looks the name up in Entra, which needs Directory
        # Readers on the server's identity when the caller is a managed identity; the SID form needs no look-up.
        # The roles are the application's (the tutorial's db_datareader + db_datawriter are an example).
        az account get-access-token --resource https://database.windows.net/ --query accessToken -o tsv |
            timed pyodbc "CREATE USER + ALTER ROLE" "$((2 + $(tr ',' '\n' <<<"$access" | wc -l)))" \
                "$PYTHON" "$TUTORIAL_SQL" --host "$db_host" --port "$db_port" --database "$database" \
                --user "$identity" --client-id "$MI_CLIENT_ID" --roles "$access"
        ;;
    postgres)
        # Part 2 step 2: psql as the Entra admin, the token as the password.
        # Deviation: pgaadauth_create_principal by display name needs a unique name in the directory; a managed
        # identity is named by its object id (pgaadauth_create_principal_with_oid, type service). The pgaadauth
        # functions live in database postgres: the session starts there and moves to the application's database
        # (\connect) for the grants: the application's, from the inventory (what migrate.yml grants; the tutorial's
        # are an example), made as a member of the tables' owner, which the admin joined: it is not a superuser.
        PGPASSWORD=$(az account get-access-token --resource-type oss-rdbms --query accessToken -o tsv)
        export PGPASSWORD
        statements=$((2 + $(grep -c ';' "$access")))
        timed psql "pgaadauth + GRANT" "$statements" psql -X -q -v ON_ERROR_STOP=1 -o /dev/null \
            "host=$db_host port=$db_port dbname=postgres user=$ADMIN_NAME sslmode=verify-full" \
            -c "SELECT * FROM pgaadauth_create_principal_with_oid('$identity', '$MI_PRINCIPAL_ID', 'service', false, false)" \
            -c "SELECT * FROM pgaadauth_list_principals(false)" \
            -c "\\connect $database" -f "$access"
        unset PGPASSWORD
        ;;
    cosmos)
        # Part 3 step 1: the data-plane role, scope relative to the account (a full id would be doubled by the CLI).
        az cosmosdb sql role assignment create --account-name "$server" --resource-group "$server_rg" \
            --role-definition-id "$access" --principal-id "$MI_PRINCIPAL_ID" --scope "$scope" >/dev/null
        ;;
    esac

    # Part 1 step 4 / Part 4: attach the identity to where the application runs.
    case $workload_type in
    vm)
        az vm identity assign --name "$workload_name" --resource-group "$workload_rg" \
            --identities "$MI_RESOURCE_ID" >/dev/null
        ;;
    app_service)
        # With several identities an app must name its own (AZURE_CLIENT_ID), or gets "no default identity".
        az webapp identity assign --name "$workload_name" --resource-group "$workload_rg" \
            --identities "$MI_RESOURCE_ID" >/dev/null
        az webapp config appsettings set --name "$workload_name" --resource-group "$workload_rg" \
            --settings "AZURE_CLIENT_ID=$MI_CLIENT_ID" >/dev/null
        ;;
    aks)
        AKS_OIDC_ISSUER=$(az aks show --name "$workload_name" --resource-group "$workload_rg" \
            --query oidcIssuerProfile.issuerUrl -o tsv)
        az identity federated-credential create --name "fc-$app" --identity-name "$identity" \
            --resource-group "$identity_rg" --issuer "$AKS_OIDC_ISSUER" \
            --subject "system:serviceaccount:$namespace:$service_account" >/dev/null
        # Part 4 steps 2 and 3: the service account's client-id annotation and label, the pod template's label; the
        # Vault Agent's injection and the password variables go (the tutorial's manifest has neither).
        timed kubectl "annotate serviceaccount" 0 kubectl -n "$namespace" annotate --overwrite -o name \
            serviceaccount "$service_account" "azure.workload.identity/client-id=$MI_CLIENT_ID" >/dev/null
        timed kubectl "label serviceaccount" 0 kubectl -n "$namespace" label --overwrite -o name \
            serviceaccount "$service_account" azure.workload.identity/use=true >/dev/null
        timed kubectl "patch deployment" 0 kubectl -n "$namespace" patch deployment "$deployment" --type merge -o name \
            -p '{"spec": {"template": {"metadata": {"labels": {"azure.workload.identity/use": "true"},
                 "annotations": {"vault.hashicorp.com/agent-inject": null}}}}}' >/dev/null
        timed kubectl "set env" 0 kubectl -n "$namespace" set env -o name deployment "$deployment" \
            DB_USER- DB_PASSWORD_FILE- >/dev/null
        ;;
    esac
done 3<"$APPS_FILE"
